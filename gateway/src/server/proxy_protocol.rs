//! The PROXY protocol (HAProxy's v1 text and v2 binary header) on listeners behind a
//! load balancer: `[server.proxy_protocol]` listeners expect every connection to start
//! with a header naming the real client, sent by a peer in the configured trusted
//! networks. The header is parsed with the `ppp` crate; this module adds what a mail
//! server needs around it:
//!
//! - [`read_header`] reads exactly what the header needs within a deadline, bounded in
//!   size, and returns any bytes read past it (a pipelining client may follow the header
//!   at once), which [`Rewind`] hands to the SMTP session before the socket's own;
//! - [`Announced`] is what the header says: a relayed client (v1 `TCP4`/`TCP6`, v2
//!   `PROXY` over IPv4/IPv6 stream), the balancer's own connection (v2 `LOCAL`, as
//!   health checks send), or nothing usable (v1 `UNKNOWN`, v2 `AF_UNSPEC`). Per the
//!   specification the last two are served as connections from the balancer itself;
//! - a header from an untrusted peer, a malformed or incomplete one, none at all within
//!   the deadline, or one for a transport that is not TCP (v2 `DGRAM`, `AF_UNIX`) closes
//!   the connection ([`ProxyError`] says why, for the log line).
//!
//! Specification: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ipnet::IpNet;
use ppp::v2;
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest header there can be: the v2 fixed part (16 octets) and the largest length
/// its 16-bit field can announce. A v1 header is at most 107 octets.
pub const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";

/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;

/// Octets asked of the socket per read while the header is incomplete: a v1 header or a
/// usual v2 one (addresses and a few TLVs) arrives in one read.
const READ_CHUNK: usize = 512;

/// Why a connection on a PROXY listener was closed before its session began.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The peer is not in `server.proxy_protocol.trusted_networks`.
    #[error("peer {0} is not a trusted PROXY protocol sender")]
    Untrusted(IpAddr),
    /// No complete header arrived within `server.proxy_protocol.timeout_ms`.
    #[error("no complete PROXY header within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The peer closed the connection before a complete header.
    #[error("connection closed before a complete PROXY header ({0} octets received)")]
    Closed(usize),
    /// What arrived is not a PROXY header.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// A valid header for something other than a TCP connection.
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
    /// Reading from the socket failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    /// The balancer relays a client: the client's address and the address it connected
    /// to (the balancer's front end).
    Client {
        /// The real client.
        client: SocketAddr,
        /// Where the client connected.
        server: SocketAddr,
    },
    /// v2 `LOCAL`: the balancer's own connection (a health check); served as a
    /// connection from the balancer.
    Local,
    /// v1 `UNKNOWN` or v2 `PROXY` with an unspecified address family: the balancer does
    /// not know the client; served as a connection from the balancer.
    Unknown,
}

/// A complete, valid header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 1 (text) or 2 (binary).
    pub version: u8,
    /// What it says.
    pub announced: Announced,
    /// Its length in octets: what follows it is the client's.
    pub len: usize,
}

/// What the octets received so far make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header; more octets are needed.
    Incomplete,
    /// A complete header.
    Header(Header),
    /// Not a header, or one that is not acceptable (closes the connection).
    Invalid(ProxyInvalid),
}

/// Why received octets are not an acceptable header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyInvalid {
    /// Not a PROXY header at all, or a broken one.
    Malformed(String),
    /// A header for another transport than TCP.
    Unsupported(&'static str),
}

impl From<ProxyInvalid> for ProxyError {
    fn from(e: ProxyInvalid) -> Self {
        match e {
            ProxyInvalid::Malformed(s) => ProxyError::Malformed(s),
            ProxyInvalid::Unsupported(s) => ProxyError::Unsupported(s),
        }
    }
}

/// Parses the octets received so far (the header, possibly followed by the client's
/// first octets).
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    // A v1 header is a line: it is parsed once whole (the parser takes a line cut
    // after a space, "... 40001 ", for a bad one), and a line it still finds
    // incomplete (no CR before the LF) is not a header.
    let v1 = &buf[..buf.len().min(V1_PREFIX.len())];
    let line = if V1_PREFIX.starts_with(v1) {
        match buf.iter().take(V1_MAX).position(|&b| b == b'\n') {
            Some(end) => Some(&buf[..=end]),
            None if buf.len() < V1_MAX => return Parsed::Incomplete,
            None => {
                return Parsed::Invalid(ProxyInvalid::Malformed(format!(
                    "v1: no line end within {V1_MAX} octets"
                )));
            }
        }
    } else {
        None
    };
    let result = HeaderResult::parse(line.unwrap_or(buf));
    if result.is_incomplete() {
        if line.is_some() {
            return Parsed::Invalid(ProxyInvalid::Malformed(
                "v1: the line does not end with CRLF".into(),
            ));
        }
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let announced = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Announced::Client {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    server: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                ppp::v1::Addresses::Tcp6(a) => Announced::Client {
                    client: SocketAddr::from((a.source_address, a.source_port)),
                    server: SocketAddr::from((a.destination_address, a.destination_port)),
                },
                ppp::v1::Addresses::Unknown => Announced::Unknown,
            };
            Parsed::Header(Header {
                version: 1,
                announced,
                len: h.header.len(),
            })
        }
        HeaderResult::V2(Ok(h)) => {
            let len = h.header.len();
            let announced = match h.command {
                // The balancer's own connection: its addresses (if any) are ignored.
                v2::Command::Local => Announced::Local,
                v2::Command::Proxy => match (h.addresses, h.protocol) {
                    (v2::Addresses::Unspecified, _) => Announced::Unknown,
                    (v2::Addresses::IPv4(a), v2::Protocol::Stream) => Announced::Client {
                        client: SocketAddr::from((a.source_address, a.source_port)),
                        server: SocketAddr::from((a.destination_address, a.destination_port)),
                    },
                    (v2::Addresses::IPv6(a), v2::Protocol::Stream) => Announced::Client {
                        client: SocketAddr::from((a.source_address, a.source_port)),
                        server: SocketAddr::from((a.destination_address, a.destination_port)),
                    },
                    (v2::Addresses::Unix(_), _) => {
                        return Parsed::Invalid(ProxyInvalid::Unsupported(
                            "AF_UNIX addresses (a TCP client is expected)",
                        ));
                    }
                    (_, _) => {
                        return Parsed::Invalid(ProxyInvalid::Unsupported(
                            "not a stream (TCP) connection",
                        ));
                    }
                },
            };
            Parsed::Header(Header {
                version: 2,
                announced,
                len,
            })
        }
        HeaderResult::V1(Err(e)) => Parsed::Invalid(ProxyInvalid::Malformed(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(ProxyInvalid::Malformed(format!("v2: {e}"))),
    }
}

/// Whether `peer` may send PROXY headers: it is in one of `trusted` (an IPv4-mapped IPv6
/// peer counts as IPv4).
pub fn trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = peer.to_canonical();
    trusted.iter().any(|n| n.contains(&ip))
}

/// Reads one header from `io` within `limit`: the header and the octets read past it
/// (the client's, for the session). Reads at most [`MAX_HEADER`] octets in all.
pub async fn read_header<S>(io: &mut S, limit: Duration) -> Result<(Header, Vec<u8>), ProxyError>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        // Bounded: every pass reads at least one octet (or returns), and the buffer
        // never grows past MAX_HEADER.
        loop {
            let start = buf.len();
            let want = READ_CHUNK.min(MAX_HEADER - start);
            buf.resize(start + want, 0);
            let n = io.read(&mut buf[start..]).await?;
            buf.truncate(start + n);
            if n == 0 {
                return Err(ProxyError::Closed(buf.len()));
            }
            match parse(&buf) {
                Parsed::Incomplete if buf.len() >= MAX_HEADER => {
                    return Err(ProxyError::Malformed("longer than any header".into()));
                }
                Parsed::Incomplete => {}
                Parsed::Header(h) => {
                    let rest = buf.split_off(h.len);
                    return Ok((h, rest));
                }
                Parsed::Invalid(e) => return Err(e.into()),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::Timeout(limit)),
    }
}

/// A stream that first gives back octets already read from it (those that followed the
/// PROXY header), then reads on from the stream itself. Writes go straight through.
#[derive(Debug)]
pub struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, with `pre` to be read before anything from it.
    pub fn new(inner: S, pre: Vec<u8>) -> Rewind<S> {
        Rewind { pre, pos: 0, inner }
    }

    /// The stream itself.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.pre.len() {
            let n = (this.pre.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.pre[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.pre.len() {
                this.pre = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The endpoints a session on a PROXY listener is served with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// The client the session is for (the real one, or the balancer for `LOCAL` and
    /// `UNKNOWN`).
    pub client: SocketAddr,
    /// Our address as the client sees it (the balancer's front end when relayed).
    pub local: SocketAddr,
}

impl Header {
    /// The session's endpoints: the announced ones for a relayed client, else the
    /// connection's own (`peer` to `local`).
    pub fn endpoints(&self, peer: SocketAddr, local: SocketAddr) -> Endpoints {
        match self.announced {
            Announced::Client { client, server } => Endpoints {
                client,
                local: server,
            },
            Announced::Local | Announced::Unknown => Endpoints {
                client: peer,
                local,
            },
        }
    }

    /// `v1`/`v2` and the command, for the log.
    pub fn describe(&self) -> &'static str {
        match (self.version, self.announced) {
            (1, Announced::Unknown) => "v1 UNKNOWN",
            (1, _) => "v1",
            (_, Announced::Local) => "v2 LOCAL",
            (_, Announced::Unknown) => "v2 PROXY (unspecified family)",
            (_, _) => "v2 PROXY",
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, duplex};

    use super::*;

    const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A v2 header written out by hand from the specification (section 2.2), not with
    /// the parser's own builder.
    fn v2(command: u8, family_proto: u8, body: &[u8]) -> Vec<u8> {
        let mut h = SIG.to_vec();
        h.push(0x20 | command);
        h.push(family_proto);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v4_body(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn header(buf: &[u8]) -> Header {
        match parse(buf) {
            Parsed::Header(h) => h,
            other => panic!("{buf:?}: {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_where_it_connected() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"EHLO c.test\r\n");
        let h = header(&buf);
        assert_eq!(h.version, 1);
        assert_eq!(h.len, line.len(), "the EHLO after it is not the header's");
        assert_eq!(
            h.announced,
            Announced::Client {
                client: "203.0.113.7:40001".parse().unwrap(),
                server: "192.0.2.1:25".parse().unwrap(),
            }
        );
        let h = header(b"PROXY TCP6 2001:db8::7 2001:db8::1 40001 25\r\n");
        assert_eq!(
            h.announced,
            Announced::Client {
                client: "[2001:db8::7]:40001".parse().unwrap(),
                server: "[2001:db8::1]:25".parse().unwrap(),
            }
        );
        let h = header(b"PROXY UNKNOWN\r\n");
        assert_eq!(h.announced, Announced::Unknown);
        assert_eq!(h.describe(), "v1 UNKNOWN");
    }

    #[test]
    fn v2_proxy_local_and_unspecified() {
        let body = v4_body([203, 0, 113, 7], [192, 0, 2, 1], 40001, 25);
        let mut buf = v2(0x1, 0x11, &body);
        let len = buf.len();
        buf.extend_from_slice(b"EHLO c.test\r\n");
        let h = header(&buf);
        assert_eq!((h.version, h.len), (2, len));
        assert_eq!(
            h.announced,
            Announced::Client {
                client: "203.0.113.7:40001".parse().unwrap(),
                server: "192.0.2.1:25".parse().unwrap(),
            }
        );
        // TLVs (here a NOOP one) are part of the header.
        let mut with_tlv = body.clone();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']);
        let buf = v2(0x1, 0x11, &with_tlv);
        assert_eq!(header(&buf).len, buf.len());
        // IPv6.
        let mut b6 = Vec::new();
        b6.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        b6.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        b6.extend_from_slice(&40001u16.to_be_bytes());
        b6.extend_from_slice(&25u16.to_be_bytes());
        let h = header(&v2(0x1, 0x21, &b6));
        assert_eq!(
            h.announced,
            Announced::Client {
                client: "[2001:db8::7]:40001".parse().unwrap(),
                server: "[2001:db8::1]:25".parse().unwrap(),
            }
        );
        // LOCAL: the balancer's own connection, whatever addresses it carries.
        let h = header(&v2(0x0, 0x00, &[]));
        assert_eq!(h.announced, Announced::Local);
        assert_eq!(h.describe(), "v2 LOCAL");
        let h = header(&v2(0x0, 0x11, &body));
        assert_eq!(h.announced, Announced::Local);
        // PROXY with AF_UNSPEC: the real endpoints apply.
        assert_eq!(header(&v2(0x1, 0x00, &[])).announced, Announced::Unknown);
    }

    #[test]
    fn endpoints_are_the_announced_ones_or_the_connections_own() {
        let peer: SocketAddr = "10.0.0.5:51000".parse().unwrap();
        let local: SocketAddr = "10.0.0.9:2526".parse().unwrap();
        let relayed = header(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n");
        assert_eq!(
            relayed.endpoints(peer, local),
            Endpoints {
                client: "203.0.113.7:40001".parse().unwrap(),
                local: "192.0.2.1:25".parse().unwrap(),
            }
        );
        let health = header(&v2(0x0, 0x00, &[]));
        assert_eq!(
            health.endpoints(peer, local),
            Endpoints {
                client: peer,
                local
            }
        );
    }

    #[test]
    fn partial_headers_are_incomplete_until_whole() {
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n";
        for n in 1..line.len() {
            assert_eq!(parse(&line[..n]), Parsed::Incomplete, "{n} octets");
        }
        let bin = v2(0x1, 0x11, &v4_body([203, 0, 113, 7], [192, 0, 2, 1], 1, 25));
        for n in 1..bin.len() {
            assert_eq!(parse(&bin[..n]), Parsed::Incomplete, "{n} octets");
        }
    }

    #[test]
    fn garbage_and_unsupported_headers_are_invalid() {
        let malformed = |b: &[u8]| matches!(parse(b), Parsed::Invalid(ProxyInvalid::Malformed(_)));
        assert!(
            malformed(b"EHLO client.test\r\n"),
            "SMTP instead of a header"
        );
        assert!(malformed(b"PROXY TCP4 300.0.113.7 192.0.2.1 40001 25\r\n"));
        assert!(malformed(b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 25\r\n"));
        assert!(malformed(b"PROXY TCP5 203.0.113.7 192.0.2.1 1 25\r\n"));
        assert!(malformed(b"PROXY TCP4 2001:db8::1 192.0.2.1 1 25\r\n"));
        assert!(malformed(&[b'P'; 200]), "no line end within 107 octets");
        assert!(
            malformed(b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\nEHLO x\r\n"),
            "LF without CR"
        );
        assert!(
            malformed(b"PROXY TCP4 203.0.113.7  40001 25\r\n"),
            "empty field"
        );
        let mut too_long = b"PROXY UNKNOWN ".to_vec();
        too_long.extend_from_slice(&[b'x'; 120]);
        assert!(malformed(&too_long));
        // v2 with a bad version, a bad command, or addresses longer than the length.
        let mut bad_version = v2(0x1, 0x11, &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        bad_version[12] = 0x31;
        assert!(malformed(&bad_version));
        assert!(malformed(&v2(
            0x2,
            0x11,
            &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)
        )));
        assert!(malformed(&v2(0x1, 0x11, &[1, 2, 3, 4])));
        // Valid, but not a TCP connection.
        let unsupported =
            |b: &[u8]| matches!(parse(b), Parsed::Invalid(ProxyInvalid::Unsupported(_)));
        assert!(unsupported(&v2(
            0x1,
            0x12,
            &v4_body([1, 2, 3, 4], [5, 6, 7, 8], 1, 2)
        )));
        assert!(unsupported(&v2(0x1, 0x31, &[0u8; 216])));
    }

    #[test]
    fn trust_is_by_network_and_v4_mapped_counts_as_v4() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(trusted("10.0.0.5".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.0.0.5".parse().unwrap(), &nets));
        assert!(trusted("::1".parse().unwrap(), &nets));
        assert!(!trusted("10.0.1.5".parse().unwrap(), &nets));
        assert!(!trusted("127.0.0.1".parse().unwrap(), &[]));
    }

    #[tokio::test]
    async fn read_header_keeps_what_follows_for_the_session() {
        let (mut a, b) = duplex(1024);
        let line = b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n";
        // Sent in pieces, the header's end and the client's first command together.
        let writer = async {
            a.write_all(&line[..10]).await.unwrap();
            a.flush().await.unwrap();
            tokio::task::yield_now().await;
            let mut rest = line[10..].to_vec();
            rest.extend_from_slice(b"EHLO c.test\r\n");
            a.write_all(&rest).await.unwrap();
            a
        };
        let mut b = b;
        let (got, a) = tokio::join!(read_header(&mut b, Duration::from_secs(10)), writer);
        let (h, rest) = got.unwrap();
        assert_eq!(h.len, line.len());
        assert_eq!(rest, b"EHLO c.test\r\n");
        // Rewind gives those octets back first, then the stream's own.
        let mut r = Rewind::new(b, rest);
        let mut a = a;
        a.write_all(b"QUIT\r\n").await.unwrap();
        drop(a);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"EHLO c.test\r\nQUIT\r\n");
    }

    #[tokio::test]
    async fn read_header_fails_on_silence_eof_and_garbage() {
        let (_keep, mut b) = duplex(1024);
        let t = Duration::from_millis(50);
        assert!(matches!(
            read_header(&mut b, t).await,
            Err(ProxyError::Timeout(d)) if d == t
        ));
        let (mut a, mut b) = duplex(1024);
        a.write_all(b"PROXY TCP4 203.0").await.unwrap();
        drop(a);
        assert!(matches!(
            read_header(&mut b, Duration::from_secs(10)).await,
            Err(ProxyError::Closed(16))
        ));
        let (mut a, mut b) = duplex(1024);
        a.write_all(b"EHLO c.test\r\n").await.unwrap();
        let e = read_header(&mut b, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ProxyError::Malformed(_)), "{e}");
    }
}
