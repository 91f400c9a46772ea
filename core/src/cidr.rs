//! Address ranges in CIDR notation (`10.244.0.0/16`, `fd00:10:96::/112`): the service CIDRs
//! cluster IPs come from, the cluster pod CIDR, and the per-node pod subnets carved out of it.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An IPv4 CIDR such as `10.96.0.0/12`, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    base: u32,
    prefix: u8,
}

impl Ipv4Cidr {
    /// Parses `a.b.c.d/n` with a prefix length from 8 to 30 (host bits are cleared).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (8..=30).contains(p))?;
        Some(Self::new(addr, prefix))
    }

    fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let mask = u32::MAX << (32 - prefix);
        Ipv4Cidr {
            base: u32::from(addr) & mask,
            prefix,
        }
    }

    /// How many addresses the range spans.
    pub fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    /// The network address (`10.244.0.0` of `10.244.0.0/16`).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    /// The prefix length (`16` of `10.244.0.0/16`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        ip >= self.base && ip - self.base < self.size()
    }

    /// The first usable address (the one given to the `kubernetes` service, or a pod
    /// subnet's gateway).
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    /// The address `offset` past the network address, if inside the range.
    pub fn address(&self, offset: u32) -> Option<Ipv4Addr> {
        (offset < self.size()).then(|| Ipv4Addr::from(self.base + offset))
    }

    /// The offset of `ip` from the network address, if inside the range.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - self.base)
    }

    /// How many `/prefix` subnets the range holds (0 when `prefix` is shorter than the range's).
    pub fn subnet_count(&self, prefix: u8) -> u32 {
        if prefix < self.prefix || prefix > 32 {
            return 0;
        }
        1u32 << (prefix - self.prefix).min(31)
    }

    /// The `index`-th `/prefix` subnet of the range.
    pub fn subnet(&self, index: u32, prefix: u8) -> Option<Ipv4Cidr> {
        (index < self.subnet_count(prefix)).then(|| Ipv4Cidr {
            base: self.base + (index << (32 - prefix)),
            prefix,
        })
    }

    /// Which `/prefix` subnet of this range `subnet` is, if it is exactly one of them.
    pub fn subnet_index(&self, subnet: &Ipv4Cidr) -> Option<u32> {
        (subnet.prefix >= self.prefix && self.contains(subnet.network()))
            .then(|| (subnet.base - self.base) >> (32 - subnet.prefix))
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// An IPv6 CIDR such as `fd00:10:96::/112`, normalised to its network address (a dual-stack
/// cluster's second service range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Cidr {
    base: u128,
    prefix: u8,
}

impl Ipv6Cidr {
    /// Parses `addr/n` with a prefix length from 64 to 126 (host bits are cleared).
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: Ipv6Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| (64..=126).contains(p))?;
        let mask = u128::MAX << (128 - prefix);
        Some(Ipv6Cidr {
            base: u128::from(addr) & mask,
            prefix,
        })
    }

    /// How many addresses the range spans.
    pub fn size(&self) -> u128 {
        1u128 << (128 - self.prefix)
    }

    /// The network address (`fd00:10:96::` of `fd00:10:96::/112`).
    pub fn network(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.base)
    }

    /// The prefix length (`112` of `fd00:10:96::/112`).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let ip = u128::from(ip);
        ip >= self.base && ip - self.base < self.size()
    }

    /// The first usable address.
    pub fn first(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.base + 1)
    }

    /// The address `offset` past the network address, if inside the range.
    pub fn address(&self, offset: u128) -> Option<Ipv6Addr> {
        (offset < self.size()).then(|| Ipv6Addr::from(self.base + offset))
    }

    /// The offset of `ip` from the network address, if inside the range.
    pub fn offset(&self, ip: Ipv6Addr) -> Option<u128> {
        self.contains(ip).then(|| u128::from(ip) - self.base)
    }
}

impl std::fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv6Addr::from(self.base), self.prefix)
    }
}

/// A range of either family (a blackholed range, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpCidr {
    /// An IPv4 range.
    V4(Ipv4Cidr),
    /// An IPv6 range.
    V6(Ipv6Cidr),
}

impl From<Ipv4Cidr> for IpCidr {
    fn from(cidr: Ipv4Cidr) -> Self {
        IpCidr::V4(cidr)
    }
}

impl From<Ipv6Cidr> for IpCidr {
    fn from(cidr: Ipv6Cidr) -> Self {
        IpCidr::V6(cidr)
    }
}

impl std::fmt::Display for IpCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpCidr::V4(cidr) => cidr.fmt(f),
            IpCidr::V6(cidr) => cidr.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_and_rejects_odd_prefixes() {
        let cidr = Ipv4Cidr::parse("10.244.3.7/16").unwrap();
        assert_eq!(cidr.to_string(), "10.244.0.0/16");
        assert_eq!(cidr.size(), 65536);
        assert!(Ipv4Cidr::parse("10.0.0.0/31").is_none());
        assert!(Ipv4Cidr::parse("10.0.0.0").is_none());
        assert!(Ipv4Cidr::parse("10.0.0.300/8").is_none());
    }

    #[test]
    fn ipv6_ranges_parse_and_count() {
        let cidr = Ipv6Cidr::parse("fd00:10:96::7/112").unwrap();
        assert_eq!(cidr.to_string(), "fd00:10:96::/112");
        assert_eq!(cidr.size(), 65536);
        assert_eq!(cidr.first(), "fd00:10:96::1".parse::<Ipv6Addr>().unwrap());
        let ip: Ipv6Addr = "fd00:10:96::ff".parse().unwrap();
        assert_eq!(cidr.offset(ip), Some(255));
        assert_eq!(cidr.address(255), Some(ip));
        assert_eq!(cidr.address(65536), None);
        assert!(!cidr.contains("fd00:10:97::1".parse().unwrap()));
        assert!(Ipv6Cidr::parse("fd00::/48").is_none(), "too large");
        assert!(Ipv6Cidr::parse("10.0.0.0/112").is_none());
    }

    #[test]
    fn subnets_round_trip() {
        let cluster = Ipv4Cidr::parse("10.244.0.0/16").unwrap();
        assert_eq!(cluster.subnet_count(24), 256);
        assert_eq!(cluster.subnet_count(8), 0);
        let fifth = cluster.subnet(5, 24).unwrap();
        assert_eq!(fifth.to_string(), "10.244.5.0/24");
        assert_eq!(cluster.subnet_index(&fifth), Some(5));
        assert!(cluster.subnet(256, 24).is_none());
        let outside = Ipv4Cidr::parse("10.245.1.0/24").unwrap();
        assert_eq!(cluster.subnet_index(&outside), None);
        assert_eq!(fifth.first(), Ipv4Addr::new(10, 244, 5, 1));
        assert_eq!(fifth.offset(Ipv4Addr::new(10, 244, 5, 9)), Some(9));
        assert_eq!(fifth.address(256), None);
    }
}
