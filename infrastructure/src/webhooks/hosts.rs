//! Where webhooks may send (API.md v1.1 Clarifications: "an operator may restrict hosts
//! through configuration"). A webhook URL is checked at registration and, again, on
//! every address its host resolves to at connect time (a name may point anywhere later:
//! DNS rebinding), and the request goes to the address that was checked, never to a
//! fresh resolution.
//!
//! The policy is two lists of CIDR ranges and host names: `LEDGER_WEBHOOK_DENY` (added
//! to the default denials) and `LEDGER_WEBHOOK_ALLOW` (when set, only these). Denial
//! wins. By default every host is allowed (loopback included, as the contract says)
//! except link-local and cloud metadata addresses, "this network" (0.0.0.0/8, which
//! Linux connects to loopback), multicast and broadcast.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Ranges refused whatever the configuration says.
pub const DEFAULT_DENY: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",
    "100.100.100.200/32",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
    "ff00::/8",
    "64:ff9b:1::/48",
    "2001::/32",
    "metadata.google.internal",
    "metadata",
];

/// One entry of a list: a range of addresses, or a host name (exact, case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Range { base: IpAddr, prefix: u8 },
    Host(String),
}

impl Rule {
    fn parse(text: &str) -> Result<Rule, String> {
        let text = text.trim();
        if let Some((base, prefix)) = text.split_once('/') {
            let base: IpAddr = base.parse().map_err(|_| format!("{text:?} is not a CIDR range"))?;
            let width = if base.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= width).ok_or(format!("{text:?}: bad prefix"))?;
            return Rule::range(base, prefix)
                .ok_or(format!("{text:?}: an IPv4 range written in IPv6 needs a prefix of at least 96"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Rule::range(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("a whole address is a range"));
        }
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            return Err(format!("{text:?} is neither a CIDR range nor a host name"));
        }
        Ok(Rule::Host(text.trim_end_matches('.').to_ascii_lowercase()))
    }

    /// A range in its canonical family: an IPv4 range written in IPv6 (`::ffff:a.b.c.d/n`,
    /// or another embedding `canonical` reads) is that IPv4 range, its prefix less 96;
    /// `None` if such a range is wider than the embedding (its prefix below 96).
    fn range(base: IpAddr, prefix: u8) -> Option<Rule> {
        match (base, canonical(base)) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => {
                Some(Rule::Range { base: IpAddr::V4(v4), prefix: prefix.checked_sub(96)? })
            }
            _ => Some(Rule::Range { base, prefix }),
        }
    }

    fn covers_ip(&self, ip: IpAddr) -> bool {
        let Rule::Range { base, prefix } = self else { return false };
        let prefix = u32::from(*prefix);
        match (*base, canonical(ip)) {
            (IpAddr::V4(b), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(prefix)).unwrap_or(0);
                prefix <= 32 && u32::from(b) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(b), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128u32.saturating_sub(prefix)).unwrap_or(0);
                prefix <= 128 && u128::from(b) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    fn covers_host(&self, host: &str) -> bool {
        matches!(self, Rule::Host(h) if *h == host)
    }
}

/// An IPv4 address however an IPv6 address carries it is that IPv4 address: mapped
/// (`::ffff:a.b.c.d`), SIIT (`::ffff:0:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, but not
/// `::` and `::1`), NAT64's well-known prefix (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:aabb:ccdd::`). A gateway on the way translates each to the IPv4 address, so a
/// denial of an IPv4 range covers them all. (`64:ff9b:1::/48` and Teredo `2001::/32`
/// carry it in ways that depend on the network: they are denied outright.)
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let bits = u128::from(v6);
    let low32 = || IpAddr::V4(Ipv4Addr::from(bits as u32));
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    match bits >> 32 {
        0xffff_0000 => return low32(),                     // ::ffff:0:a.b.c.d (SIIT)
        0x0064_ff9b_0000_0000_0000_0000 => return low32(), // 64:ff9b::/96 (NAT64)
        0 if bits > 1 => return low32(),                   // ::a.b.c.d (IPv4-compatible)
        _ => {}
    }
    if bits >> 112 == 0x2002 {
        return IpAddr::V4(Ipv4Addr::from((bits >> 80) as u32)); // 6to4
    }
    ip
}

/// Where webhooks may send.
#[derive(Clone, Debug)]
pub struct HostPolicy {
    deny: Vec<Rule>,
    /// Empty: every host not denied.
    allow: Vec<Rule>,
}

/// Why a URL or an address is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error("the URL must not carry credentials (user:password@)")]
    Credentials,
    #[error("the URL's host is refused by the webhook host policy")]
    Denied,
    #[error("the URL does not parse as an http(s) URL with a host")]
    Malformed,
}

impl Default for HostPolicy {
    fn default() -> HostPolicy {
        HostPolicy::new("", "").expect("the default denials parse")
    }
}

impl HostPolicy {
    /// The policy from `LEDGER_WEBHOOK_ALLOW` and `LEDGER_WEBHOOK_DENY` (comma-separated).
    pub fn new(allow: &str, deny: &str) -> Result<HostPolicy, String> {
        let list = |text: &str| -> Result<Vec<Rule>, String> {
            text.split(',').filter(|t| !t.trim().is_empty()).map(Rule::parse).collect()
        };
        let mut denied = list(&DEFAULT_DENY.join(","))?;
        denied.extend(list(deny)?);
        Ok(HostPolicy { deny: denied, allow: list(allow)? })
    }

    /// Whether a request may go to `ip`.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|r| r.covers_ip(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|r| r.covers_ip(ip)))
    }

    /// Whether a URL's host may be used at all (before resolution): an address literal
    /// in any spelling the resolver would accept is checked as that address; a name
    /// against the name rules (a name in an allow list is allowed by name, and its
    /// addresses are still checked against the denials at connect time).
    pub fn check_url(&self, url: &str) -> Result<(), HostRefusal> {
        let uri: hyper::Uri = url.parse().map_err(|_| HostRefusal::Malformed)?;
        let authority = uri.authority().ok_or(HostRefusal::Malformed)?;
        if authority.as_str().contains('@') {
            return Err(HostRefusal::Credentials);
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or(HostRefusal::Malformed)?;
        match literal_ip(host) {
            Some(ip) if self.allows_ip(ip) => Ok(()),
            Some(_) => Err(HostRefusal::Denied),
            None => {
                let name = host.trim_end_matches('.').to_ascii_lowercase();
                if self.deny.iter().any(|r| r.covers_host(&name)) {
                    return Err(HostRefusal::Denied);
                }
                // An allow list of ranges only: a name is checked when it resolves.
                let names_listed = self.allow.iter().any(|r| matches!(r, Rule::Host(_)));
                let ranges_listed = self.allow.iter().any(|r| matches!(r, Rule::Range { .. }));
                if self.allow.is_empty()
                    || self.allow.iter().any(|r| r.covers_host(&name))
                    || (ranges_listed && !names_listed)
                {
                    Ok(())
                } else {
                    Err(HostRefusal::Denied)
                }
            }
        }
    }

    /// Whether the name (not an address) is allowed by name: then its addresses need
    /// only pass the denials.
    pub fn allows_name(&self, host: &str) -> bool {
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        self.allow.iter().any(|r| r.covers_host(&name))
    }

    /// Whether a resolved address of `host` may be connected to.
    pub fn allows_resolved(&self, host: &str, ip: IpAddr) -> bool {
        if self.deny.iter().any(|r| r.covers_ip(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allows_name(host) || self.allow.iter().any(|r| r.covers_ip(ip))
    }
}

/// The address a host literal stands for, in every spelling the system resolver
/// (`inet_aton`) accepts: `[v6]`, dotted quads, and 1 to 4 parts in decimal, octal
/// (`0…`) or hex (`0x…`), such as `2852039166` or `0xa9fea9fe` for 169.254.169.254.
pub fn literal_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(v6) = bare.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    let parts: Vec<&str> = bare.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None if p.len() > 1 && p.starts_with('0') => (&p[1..], 8),
            None => (*p, 10),
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        values.push(if digits.is_empty() { 0 } else { u64::from_str_radix(digits, radix).ok()? });
    }
    let (last, head) = values.split_last()?;
    if head.iter().any(|v| *v > 255) || *last >= 1u64 << (8 * (5 - values.len())) {
        return None;
    }
    let mut n: u64 = 0;
    for (i, v) in head.iter().enumerate() {
        n |= v << (24 - 8 * i);
    }
    n |= last;
    Some(IpAddr::V4(Ipv4Addr::from(u32::try_from(n).ok()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_metadata_address_is_that_address() {
        let metadata = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
        for spelling in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "[::ffff:169.254.169.254]",
        ] {
            assert_eq!(literal_ip(spelling).map(canonical), Some(metadata), "{spelling}");
        }
        assert_eq!(literal_ip("127.1"), Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))));
        for name in ["example.com", "1.2.3.4.5", "256.1.1.1", "localhost", ""] {
            assert_eq!(literal_ip(name), None, "{name}");
        }
    }

    #[test]
    fn the_default_policy_allows_loopback_and_public_hosts_but_not_metadata_or_credentials() {
        let p = HostPolicy::default();
        for ok in ["http://127.0.0.1:8080/hook", "https://example.com/x", "http://[::1]:9/", "http://localhost:1/"] {
            assert_eq!(p.check_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("http://user:pw@127.0.0.1/", HostRefusal::Credentials),
            ("http://169.254.169.254/latest", HostRefusal::Denied),
            ("http://2852039166/", HostRefusal::Denied),
            ("http://[fe80::1]/", HostRefusal::Denied),
            ("http://0.0.0.0:5432/", HostRefusal::Denied),
            ("http://metadata.google.internal/", HostRefusal::Denied),
            ("http://[::ffff:a9fe:a9fe]/", HostRefusal::Denied),
        ] {
            assert_eq!(p.check_url(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn ipv4_carried_in_ipv6_is_checked_as_ipv4() {
        let p = HostPolicy::new("", "10.0.0.0/8").expect("parses");
        for bad in [
            "http://[::ffff:10.0.0.1]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::10.0.0.1]/",
            "http://[2002:a00:1::]/",
            "http://[::ffff:0:a00:1]/",
            "http://[64:ff9b:1::a00:1]/",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        ] {
            assert_eq!(p.check_url(bad), Err(HostRefusal::Denied), "{bad}");
        }
        assert_eq!(p.check_url("http://[::1]:9/"), Ok(()), "loopback is IPv6 here, not 0.0.0.1");
        assert_eq!(p.check_url("http://[2606:4700::1111]/"), Ok(()));
        // An IPv4 range written in IPv6 is that IPv4 range, never "all of IPv4".
        let only = HostPolicy::new("::ffff:203.0.113.0/120", "").expect("parses");
        assert_eq!(only.check_url("http://203.0.113.9/"), Ok(()));
        assert_eq!(only.check_url("http://127.0.0.1/"), Err(HostRefusal::Denied));
        assert_eq!(only.check_url("http://10.1.2.3/"), Err(HostRefusal::Denied));
        let deny = HostPolicy::new("", "::ffff:10.0.0.0/104").expect("parses");
        assert_eq!(deny.check_url("http://10.9.9.9/"), Err(HostRefusal::Denied));
        assert_eq!(deny.check_url("http://192.0.2.1/"), Ok(()));
        assert!(HostPolicy::new("", "::ffff:10.0.0.0/90").is_err(), "wider than the embedding");
    }

    #[test]
    fn configured_lists_deny_ranges_and_allow_only_what_they_name() {
        let p = HostPolicy::new("", "127.0.0.0/8, 10.0.0.0/8").expect("parses");
        assert_eq!(p.check_url("http://127.0.0.1/"), Err(HostRefusal::Denied));
        assert_eq!(p.check_url("http://2130706433/"), Err(HostRefusal::Denied), "127.0.0.1 in decimal");
        assert!(!p.allows_resolved("localhost", "127.0.0.1".parse().expect("ip")), "a name resolving there");
        assert!(p.allows_resolved("example.com", "93.184.216.34".parse().expect("ip")));
        let only = HostPolicy::new("hooks.example.com, 192.0.2.0/24", "").expect("parses");
        assert_eq!(only.check_url("http://hooks.example.com/"), Ok(()));
        assert_eq!(only.check_url("http://other.example.com/"), Err(HostRefusal::Denied));
        assert_eq!(only.check_url("http://192.0.2.7/"), Ok(()));
        assert_eq!(only.check_url("http://127.0.0.1/"), Err(HostRefusal::Denied));
        assert!(only.allows_resolved("hooks.example.com", "203.0.113.9".parse().expect("ip")));
        assert!(!only.allows_resolved("hooks.example.com", "169.254.169.254".parse().expect("ip")), "denial wins");
        assert!(HostPolicy::new("", "not a range/99").is_err());
    }
}
