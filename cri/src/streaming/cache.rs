//! Pending streaming requests by token, as the kubelet's streaming server keeps them:
//! a token is random, good for one connection, and expires after a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::v1;

/// How long a URL stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Requests waiting for their connection, at most.
pub const MAX_PENDING: usize = 1000;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Exec(v1::ExecRequest),
    Attach(v1::AttachRequest),
    PortForward(v1::PortForwardRequest),
}

#[derive(Debug, Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

/// Too many requests are waiting.
#[derive(Debug, thiserror::Error)]
#[error("{MAX_PENDING} streaming requests are already waiting for their clients")]
pub struct Full;

impl Cache {
    /// Stores `request`; returns its token.
    pub fn insert(&self, request: Pending) -> Result<String, Full> {
        self.insert_at(request, Instant::now())
    }

    fn insert_at(&self, request: Pending, now: Instant) -> Result<String, Full> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_TTL);
        if entries.len() >= MAX_PENDING {
            return Err(Full);
        }
        let token = loop {
            // 128 random bits, URL-safe.
            let t = crate::runtime::new_id()[..32].to_string();
            if !entries.contains_key(&t) {
                break t;
            }
        };
        entries.insert(token.clone(), (now, request));
        Ok(token)
    }

    /// Takes the request of `token`: once only, and only within its lifetime.
    pub fn consume(&self, token: &str) -> Option<Pending> {
        self.consume_at(token, Instant::now())
    }

    fn consume_at(&self, token: &str, now: Instant) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, request) = entries.remove(token)?;
        (now.duration_since(at) < TOKEN_TTL).then_some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(v1::ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use_and_expire() {
        let cache = Cache::default();
        let t0 = Instant::now();
        let a = cache.insert_at(exec(), t0).expect("test fixture");
        let b = cache.insert_at(exec(), t0).expect("test fixture");
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));

        assert_eq!(cache.consume_at(&a, t0), Some(exec()));
        assert_eq!(cache.consume_at(&a, t0), None, "single use");
        assert_eq!(cache.consume_at(&b, t0 + TOKEN_TTL), None, "expired");
        assert_eq!(cache.consume_at("nope", t0), None);
    }

    #[test]
    fn pending_requests_are_bounded_and_expired_ones_make_room() {
        let cache = Cache::default();
        let t0 = Instant::now();
        for _ in 0..MAX_PENDING {
            cache.insert_at(exec(), t0).expect("test fixture");
        }
        assert!(cache.insert_at(exec(), t0).is_err());
        assert!(cache.insert_at(exec(), t0 + TOKEN_TTL).is_ok());
    }
}
