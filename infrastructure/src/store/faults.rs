//! Who is to blame for a database error: the request, a bug of ours, or the database
//! being unavailable (only that counts for breakers and answers 503).

/// Who is to blame for a database error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbFault {
    /// The data sent caused it (a value out of range or malformed, a check or not-null
    /// rule, a value too large): the request's fault, never a dependency failure.
    Input,
    /// A bug of ours (a statement or schema mismatch, a row that does not decode, an
    /// unexpected constraint): an internal error, never a dependency failure either.
    Bug,
    /// The database is unreachable, overloaded, shutting down, or timed a statement
    /// or lock out: a dependency failure, which breakers count.
    Unavailable,
}

/// Classifies a database error by SQLSTATE (PostgreSQL appendix A) and by kind.
pub fn db_fault(e: &sqlx::Error) -> DbFault {
    match e {
        sqlx::Error::Database(d) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            match (code.get(..2).unwrap_or(""), code.as_str()) {
                ("22" | "54", _) | (_, "23502" | "23514") => DbFault::Input,
                // 3D000: the database does not exist (a shard dropped or misnamed).
                ("08" | "25" | "40" | "53" | "57" | "58", _) | (_, "55P03" | "3D000") => DbFault::Unavailable,
                _ => DbFault::Bug,
            }
        }
        sqlx::Error::Encode(_) => DbFault::Input,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => DbFault::Unavailable,
        _ => DbFault::Bug,
    }
}
