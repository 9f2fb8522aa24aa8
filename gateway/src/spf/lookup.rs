//! The DNS an SPF check needs, as a trait: the gateway's resolver in production, a map
//! in unit tests.

use std::future::Future;
use std::net::IpAddr;

use crate::dns::{DnsError, Resolver, any_name};

/// A lookup's outcome, as SPF sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records (never empty).
    Records(Vec<T>),
    /// NXDOMAIN or no records of the type: a "void lookup" (RFC 7208 4.6.4).
    Void,
    /// A timeout or server failure (`temperror`).
    Failed,
}

impl<T> Answer<T> {
    fn of(r: Result<Vec<T>, DnsError>) -> Answer<T> {
        match r {
            Ok(v) if v.is_empty() => Answer::Void,
            Ok(v) => Answer::Records(v),
            Err(DnsError::NxDomain | DnsError::InvalidName) => Answer::Void,
            Err(_) => Answer::Failed,
        }
    }
}

/// DNS for SPF.
pub trait Lookup: Sync {
    /// TXT records of `name` (each record's strings joined).
    fn txt(&self, name: &str) -> impl Future<Output = Answer<String>> + Send;
    /// A (`v6 = false`) or AAAA records of `name`.
    fn addrs(&self, name: &str, v6: bool) -> impl Future<Output = Answer<IpAddr>> + Send;
    /// MX exchanges of `name` (a null MX is `"."` or `""`).
    fn mx(&self, name: &str) -> impl Future<Output = Answer<String>> + Send;
    /// PTR names of `ip`.
    fn ptr(&self, ip: IpAddr) -> impl Future<Output = Answer<String>> + Send;
}

impl Lookup for Resolver {
    async fn txt(&self, name: &str) -> Answer<String> {
        Answer::of(async { self.txt_at(any_name(name)?).await }.await)
    }

    async fn addrs(&self, name: &str, v6: bool) -> Answer<IpAddr> {
        Answer::of(
            async {
                let name = any_name(name)?;
                if v6 {
                    self.aaaa_at(name).await
                } else {
                    self.a_at(name).await
                }
            }
            .await,
        )
    }

    async fn mx(&self, name: &str) -> Answer<String> {
        Answer::of(
            async { self.mx_at(any_name(name)?).await }
                .await
                .map(|v| v.into_iter().map(|m| m.exchange).collect()),
        )
    }

    async fn ptr(&self, ip: IpAddr) -> Answer<String> {
        Answer::of(Resolver::ptr(self, ip).await)
    }
}
