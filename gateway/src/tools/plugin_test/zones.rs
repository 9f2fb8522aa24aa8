//! `--dns-zone`: RFC 1035 master files served in-process, so that every lookup of the
//! run (plugins' `dns` capability, SPF/DKIM/DMARC, the client's reverse name, MX
//! routing) is answered from them and from nothing else.
//!
//! The files are parsed by hickory-proto's zone-file parser and served by
//! hickory-server's in-memory zone handlers (the hickory the gateway's resolver is
//! built on) on an ephemeral UDP and TCP port of 127.0.0.1, in this process; the run's
//! resolver is pointed at it, so every lookup takes the path it takes in the server.
//! A root zone with no records answers every name outside the given zones: NXDOMAIN.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::SOA;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// Why the zones cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A file could not be read.
    #[error("cannot read zone file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not a valid master file.
    #[error("zone file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loopback sockets could not be bound.
    #[error("cannot serve the zones on 127.0.0.1: {0}")]
    Bind(std::io::Error),
}

/// The zones being served; dropping it stops the server.
pub struct ZoneServer {
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    /// The zones' apex names (with the trailing dot), in the order given.
    pub zones: Vec<String>,
    _server: Server<Catalog>,
}

impl std::fmt::Debug for ZoneServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneServer")
            .field("addr", &self.addr)
            .field("zones", &self.zones)
            .finish()
    }
}

/// One zone, in memory.
type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// TTL of the SOA record made for a file without one, and its negative-caching time.
const SYNTHETIC_TTL: u32 = 300;
/// Attempts at finding a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 50;

/// The origin a file names when it has no `$ORIGIN`: its file name without a `.zone`
/// or `.db` extension, or without a `db.` prefix (BIND's convention).
fn origin_from_file_name(path: &Path) -> Option<Name> {
    let file = path.file_name()?.to_str()?;
    let name = file
        .strip_suffix(".zone")
        .or_else(|| file.strip_suffix(".db"))
        .or_else(|| file.strip_prefix("db."))
        .unwrap_or(file);
    Name::from_ascii(name).ok().map(|mut n| {
        n.set_fqdn(true);
        n
    })
}

/// A SOA record for `apex` (files without one; the empty root zone).
fn soa(apex: &Name) -> Record {
    let host = |label: &str| {
        Name::from_ascii(label)
            .and_then(|l| l.append_domain(&Name::from_ascii("invalid.")?))
            .unwrap_or_else(|_| Name::root())
    };
    Record::from_rdata(
        apex.clone(),
        SYNTHETIC_TTL,
        RData::SOA(SOA::new(
            host("ns"),
            host("hostmaster"),
            1,
            3600,
            600,
            86400,
            SYNTHETIC_TTL,
        )),
    )
}

/// One parsed file: its apex and records.
fn parse(path: &Path) -> Result<(Name, BTreeMap<RrKey, RecordSet>), ZoneError> {
    let text = std::fs::read_to_string(path).map_err(|source| ZoneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| ZoneError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let (origin, mut records) =
        Parser::new(text, Some(path.to_path_buf()), origin_from_file_name(path))
            .parse()
            .map_err(|e| invalid(e.to_string()))?;
    let apexes: Vec<Name> = records
        .keys()
        .filter(|k| k.record_type == RecordType::SOA)
        .map(|k| Name::from(k.name.clone()))
        .collect();
    let apex = match apexes.as_slice() {
        [] => {
            // Lenient with hand-written test zones: the origin, with a made-up SOA.
            records.insert(
                RrKey::new(LowerName::new(&origin), RecordType::SOA),
                RecordSet::from(soa(&origin)),
            );
            origin
        }
        [one] => one.clone(),
        more => {
            return Err(invalid(format!(
                "{} SOA records ({}); one file is one zone",
                more.len(),
                more.iter()
                    .map(Name::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    if let Some(k) = records
        .keys()
        .find(|k| !apex.zone_of(&Name::from(k.name.clone())))
    {
        return Err(invalid(format!(
            "{} is outside the zone {apex}",
            Name::from(k.name.clone())
        )));
    }
    Ok((apex, records))
}

/// Parses `files` and serves them on 127.0.0.1 (UDP and TCP, one port).
pub async fn serve(files: &[PathBuf]) -> Result<ZoneServer, ZoneError> {
    let mut catalog = Catalog::new();
    let mut zones = Vec::new();
    let mut has_root = false;
    for path in files {
        let (apex, records) = parse(path)?;
        let lower = LowerName::new(&apex);
        if catalog.contains(&lower) {
            return Err(ZoneError::Invalid {
                path: path.clone(),
                reason: format!("the zone {apex} is given twice"),
            });
        }
        let handler = Zone::new(apex.clone(), records, ZoneType::Primary, AxfrPolicy::Deny)
            .map_err(|reason| ZoneError::Invalid {
                path: path.clone(),
                reason,
            })?;
        has_root |= apex.is_root();
        zones.push(apex.to_string());
        catalog.upsert(lower, vec![Arc::new(handler) as Arc<dyn ZoneHandler>]);
    }
    if !has_root {
        // Every other name: an authoritative NXDOMAIN from an empty root zone.
        let mut root = Zone::empty(Name::root(), ZoneType::Primary, AxfrPolicy::Deny);
        root.upsert_mut(soa(&Name::root()), 1);
        catalog.upsert(
            LowerName::new(&Name::root()),
            vec![Arc::new(root) as Arc<dyn ZoneHandler>],
        );
    }
    let (udp, tcp) = bind().await.map_err(ZoneError::Bind)?;
    let addr = udp.local_addr().map_err(ZoneError::Bind)?;
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(10), 64 * 1024);
    Ok(ZoneServer {
        addr,
        zones,
        _server: server,
    })
}

/// A UDP socket and a TCP listener on the same ephemeral port of 127.0.0.1.
async fn bind() -> std::io::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = udp.local_addr()?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_origin_comes_from_the_file_name_without_an_origin_line() {
        let o = |f: &str| origin_from_file_name(Path::new(f)).map(|n| n.to_string());
        assert_eq!(o("/z/example.test.zone").as_deref(), Some("example.test."));
        assert_eq!(o("db.example.test").as_deref(), Some("example.test."));
        assert_eq!(o("example.test.db").as_deref(), Some("example.test."));
        assert_eq!(o("example.test").as_deref(), Some("example.test."));
    }

    #[test]
    fn a_file_without_soa_gets_one_and_names_outside_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.test.zone",
            "@ 300 TXT \"v=spf1 -all\"\nmx 300 A 192.0.2.25\n",
        );
        let (apex, records) = parse(&p).unwrap();
        assert_eq!(apex.to_string(), "a.test.");
        assert!(
            records
                .keys()
                .any(|k| k.record_type == RecordType::SOA && Name::from(k.name.clone()) == apex)
        );
        let p = write(
            dir.path(),
            "b.test.zone",
            "$ORIGIN b.test.\n@ 300 SOA ns h 1 2 3 4 5\nwww.other.test. 300 A 192.0.2.1\n",
        );
        let e = parse(&p).unwrap_err().to_string();
        assert!(e.contains("outside the zone b.test."), "{e}");
        let p = write(dir.path(), "c.test.zone", "@ 300 NOTATYPE x\n");
        assert!(matches!(parse(&p), Err(ZoneError::Invalid { .. })));
        assert!(matches!(
            parse(&dir.path().join("missing.zone")),
            Err(ZoneError::Read { .. })
        ));
    }

    #[tokio::test]
    async fn names_in_the_zones_resolve_and_others_are_nxdomain() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "zone-file",
            "$ORIGIN example.test.\n$TTL 300\n@ SOA ns hostmaster 1 3600 600 86400 300\n\
             @ MX 10 mx\nmx A 192.0.2.25\n@ TXT \"v=spf1 ip4:192.0.2.1 -all\"\n",
        );
        let z = serve(std::slice::from_ref(&p)).await.unwrap();
        assert_eq!(z.zones, ["example.test."]);
        let r = crate::dns::Resolver::new(crate::dns::Settings {
            servers: vec![z.addr],
            timeout: Duration::from_secs(5),
            ..Default::default()
        });
        assert_eq!(
            r.mx("example.test").await.unwrap()[0].exchange,
            "mx.example.test"
        );
        assert_eq!(
            r.a("mx.example.test").await.unwrap(),
            ["192.0.2.25".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(r.a("example.test").await, Ok(vec![]), "no such records");
        assert_eq!(
            r.a("nothing.example.test").await,
            Err(crate::dns::DnsError::NxDomain)
        );
        assert_eq!(
            r.txt("example.org").await,
            Err(crate::dns::DnsError::NxDomain),
            "outside every zone"
        );
        assert_eq!(
            r.ptr("192.0.2.1".parse().unwrap()).await,
            Err(crate::dns::DnsError::NxDomain)
        );
        assert!(matches!(
            serve(&[p.clone(), p]).await,
            Err(ZoneError::Invalid { .. })
        ));
    }
}
