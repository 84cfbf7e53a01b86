//! Caps on open streams: in all on this replica (503 beyond, so clients try
//! another replica) and per client address (429 beyond).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use super::error::ApiError;

/// The address a request came from (put in request extensions for requests
/// that hyper serves).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Admits streams up to the caps; a permit given out is returned when dropped.
#[derive(Debug, Clone, Default)]
pub struct StreamGate {
    inner: Arc<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    max_total: usize,
    max_per_client: usize,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted stream; dropping it frees its place.
#[derive(Debug)]
pub struct StreamPermit {
    gate: Arc<GateInner>,
    client: Option<IpAddr>,
}

impl StreamGate {
    /// Caps of `max_total` streams and `max_per_client` per address (0 = none).
    pub fn new(max_total: usize, max_per_client: usize) -> StreamGate {
        StreamGate {
            inner: Arc::new(GateInner {
                max_total,
                max_per_client,
                ..GateInner::default()
            }),
        }
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Relaxed)
    }

    /// Admits one more stream from `client`, or says which cap it hit.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<StreamPermit, ApiError> {
        let inner = &self.inner;
        let open = inner.open.fetch_add(1, Ordering::AcqRel);
        // The permit exists from here, so every refusal below undoes its count.
        let mut permit = StreamPermit {
            gate: inner.clone(),
            client: None,
        };
        if inner.max_total > 0 && open >= inner.max_total {
            return Err(ApiError::unavailable(
                "stream_limit",
                format!(
                    "this replica holds its limit of {} streams; try again (another replica may take it)",
                    inner.max_total
                ),
            ));
        }
        let Some(client) = client.filter(|_| inner.max_per_client > 0) else {
            return Ok(permit);
        };
        let mut per_client = inner.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_client.entry(client).or_insert(0);
        if *count >= inner.max_per_client {
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "at most {} open streams per client address; close one first",
                    inner.max_per_client
                ),
            );
            error.retry_after = Some(5);
            return Err(error);
        }
        *count += 1;
        permit.client = Some(client);
        Ok(permit)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(client) = self.client {
            let mut per_client = self
                .gate
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = per_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    per_client.remove(&client);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let gate = StreamGate::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = gate.admit(Some(a)).unwrap();
        let _second = gate.admit(Some(a)).unwrap();
        assert_eq!(gate.admit(Some(a)).unwrap_err().status, 429);
        let _third = gate.admit(Some(b)).unwrap();
        assert_eq!(gate.admit(Some(b)).unwrap_err().status, 503);
        assert_eq!(gate.open(), 3);
        drop(first);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(Some(a)).is_ok());
    }

    #[test]
    fn zero_means_no_cap() {
        let gate = StreamGate::new(0, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let permits: Vec<_> = (0..100).map(|_| gate.admit(Some(a)).unwrap()).collect();
        assert_eq!(gate.open(), 100);
        drop(permits);
        assert_eq!(gate.open(), 0);
    }
}
