//! Rate limits: token buckets per key (requests and tokens per minute) and per client address
//! (failed key checks), on the monotonic clock, so a wall-clock jump changes nothing.
//!
//! A key's requests-per-minute bucket holds a minute's worth and refills continuously: one
//! request takes one. Its tokens-per-minute bucket is charged after the fact with the tokens a
//! generation really used, and may go into debt; a key in debt is refused until the bucket
//! refills above zero (a request's size is unknown until it is done, so this is the only
//! exact accounting, and OpenAI's limits behave the same).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A bucket of `capacity` that refills at `capacity` per `period`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    updated: Instant,
}

impl TokenBucket {
    pub fn full(capacity: u32, period: Duration, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second: capacity / period.as_secs_f64().max(f64::EPSILON),
            level: capacity,
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
    }

    /// Takes `amount` if the bucket holds it; otherwise how long until it will.
    pub fn try_take(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= amount {
            self.level -= amount;
            Ok(())
        } else {
            Err(self.wait_for(amount))
        }
    }

    /// Whether anything is left (a bucket in debt is not); otherwise how long until it is.
    pub fn check_positive(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level > 0.0 {
            Ok(())
        } else {
            Err(self.wait_for(f64::MIN_POSITIVE))
        }
    }

    /// Whether the bucket holds `amount`, without taking it; otherwise how long until it will.
    pub fn check_at_least(&mut self, amount: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.level >= amount {
            Ok(())
        } else {
            Err(self.wait_for(amount))
        }
    }

    /// Takes `amount` whatever the level: the bucket may go into debt.
    pub fn charge(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.level -= amount;
    }

    fn wait_for(&self, amount: f64) -> Duration {
        let missing = (amount - self.level).max(0.0);
        Duration::from_secs_f64(missing / self.per_second)
    }

    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.capacity
    }

    /// Changes the capacity (an admin edited the key), keeping the share of it left (or owed).
    fn resize(&mut self, capacity: u32, period: Duration, now: Instant) {
        let capacity = f64::from(capacity.max(1));
        if capacity != self.capacity {
            self.refill(now);
            self.level *= capacity / self.capacity;
            self.capacity = capacity;
            self.per_second = capacity / period.as_secs_f64().max(f64::EPSILON);
        }
    }
}

pub const MINUTE: Duration = Duration::from_secs(60);

/// Which per-minute limit a key hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLimit {
    RequestsPerMinute(u32),
    TokensPerMinute(u32),
}

#[derive(Debug, Default)]
struct KeyBuckets {
    requests: Option<TokenBucket>,
    tokens: Option<TokenBucket>,
}

/// The per-key buckets, keyed by key id (keys are created by admins, so the map is as small
/// as the key table).
#[derive(Debug, Default)]
pub struct KeyRates {
    keys: Mutex<HashMap<i64, KeyBuckets>>,
}

impl KeyRates {
    /// Admits one request of key `id` under its current limits, or says which limit it hit and
    /// when to retry.
    pub fn admit(
        &self,
        id: i64,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u32>,
        now: Instant,
    ) -> Result<(), (KeyLimit, Duration)> {
        if requests_per_minute.is_none() && tokens_per_minute.is_none() {
            return Ok(());
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = keys.entry(id).or_default();
        let tokens = sync_bucket(&mut buckets.tokens, tokens_per_minute, now);
        if let Some((limit, bucket)) = tokens {
            bucket
                .check_positive(now)
                .map_err(|wait| (KeyLimit::TokensPerMinute(limit), wait))?;
        }
        if let Some((limit, bucket)) = sync_bucket(&mut buckets.requests, requests_per_minute, now)
        {
            bucket
                .try_take(1.0, now)
                .map_err(|wait| (KeyLimit::RequestsPerMinute(limit), wait))?;
        }
        Ok(())
    }

    /// Charges the tokens a finished generation of key `id` used.
    pub fn charge_tokens(&self, id: i64, tokens: u64, now: Instant) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = keys.get_mut(&id).and_then(|b| b.tokens.as_mut()) {
            bucket.charge(tokens as f64, now);
        }
    }
}

fn sync_bucket(
    slot: &mut Option<TokenBucket>,
    limit: Option<u32>,
    now: Instant,
) -> Option<(u32, &mut TokenBucket)> {
    match limit {
        None => {
            *slot = None;
            None
        }
        Some(limit) => {
            let bucket = slot.get_or_insert_with(|| TokenBucket::full(limit, MINUTE, now));
            bucket.resize(limit, MINUTE, now);
            Some((limit, bucket))
        }
    }
}

/// Who failed a key check: an IPv4 address, or an IPv6 /64 (one host usually holds a whole
/// /64, so counting single IPv6 addresses would be no limit at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(u128);

impl From<IpAddr> for ClientId {
    fn from(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                None => Self((u128::from(v6) & !((1u128 << 64) - 1)) | (1u128 << 127)),
            },
        }
    }
}

/// Failed key checks per client: a burst of `per_minute`, refilling at that rate; an empty
/// bucket makes the client's key checks answer 429 until it refills. Bounded to `capacity`
/// clients: when full, clients whose buckets have refilled are forgotten first, then the one
/// that failed longest ago.
#[derive(Debug)]
pub struct AuthFailures {
    per_minute: u32,
    capacity: usize,
    clients: Mutex<HashMap<ClientId, TokenBucket>>,
}

impl AuthFailures {
    pub fn new(per_minute: u32, capacity: usize) -> Self {
        Self {
            per_minute,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` while `client` has used up its failures.
    pub fn check(&self, client: ClientId, now: Instant) -> Result<(), Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get_mut(&client) {
            Some(bucket) => bucket.check_at_least(1.0, now),
            None => Ok(()),
        }
    }

    /// Counts one failed key check by `client`.
    pub fn record_failure(&self, client: ClientId, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if !clients.contains_key(&client) && clients.len() >= self.capacity {
            clients.retain(|_, bucket| !bucket.is_full(now));
            if clients.len() >= self.capacity
                && let Some(oldest) = clients
                    .iter()
                    .min_by_key(|(_, bucket)| bucket.updated)
                    .map(|(id, _)| *id)
            {
                clients.remove(&oldest);
            }
        }
        let per_minute = self.per_minute;
        clients
            .entry(client)
            .or_insert_with(|| TokenBucket::full(per_minute, MINUTE, now))
            .charge(1.0, now);
    }

    pub fn tracked_clients(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Whole seconds for `Retry-After`, at least 1.
pub fn retry_after_seconds(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_allow_a_burst_then_refill() {
        let rates = KeyRates::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            rates.admit(1, Some(3), None, t0).expect("within the burst");
        }
        let (limit, wait) = rates.admit(1, Some(3), None, t0).expect_err("fourth");
        assert_eq!(limit, KeyLimit::RequestsPerMinute(3));
        assert_eq!(retry_after_seconds(wait), 20, "one request per 20 s");
        rates
            .admit(1, Some(3), None, t0 + Duration::from_secs(20))
            .expect("refilled one");
        // Another key is unaffected.
        rates.admit(2, Some(3), None, t0).expect("other key");
    }

    #[test]
    fn tokens_per_minute_are_charged_after_the_fact_and_debt_blocks() {
        let rates = KeyRates::default();
        let t0 = Instant::now();
        rates
            .admit(1, None, Some(600), t0)
            .expect("empty bucket is full");
        rates.charge_tokens(1, 900, t0);
        let (limit, wait) = rates.admit(1, None, Some(600), t0).expect_err("in debt");
        assert_eq!(limit, KeyLimit::TokensPerMinute(600));
        // 300 in debt at 10 per second: 30 s.
        assert_eq!(retry_after_seconds(wait), 30);
        rates
            .admit(1, None, Some(600), t0 + Duration::from_secs(31))
            .expect("repaid");
    }

    #[test]
    fn a_changed_limit_takes_effect_and_a_removed_one_frees_the_key() {
        let rates = KeyRates::default();
        let t0 = Instant::now();
        rates.admit(1, Some(10), None, t0).expect("first");
        rates
            .admit(1, Some(1), None, t0)
            .expect_err("now capped at 1, already used");
        rates.admit(1, None, None, t0).expect("no limit any more");
    }

    #[test]
    fn auth_failures_slow_one_client_not_the_others() {
        let failures = AuthFailures::new(3, 100);
        let t0 = Instant::now();
        let attacker = ClientId::from("203.0.113.9".parse::<IpAddr>().expect("ip"));
        let neighbour = ClientId::from("203.0.113.10".parse::<IpAddr>().expect("ip"));
        for _ in 0..3 {
            failures.check(attacker, t0).expect("not yet limited");
            failures.record_failure(attacker, t0);
        }
        let wait = failures.check(attacker, t0).expect_err("limited");
        assert_eq!(retry_after_seconds(wait), 20);
        failures.check(neighbour, t0).expect("others unaffected");
        failures
            .check(attacker, t0 + Duration::from_secs(20))
            .expect("refilled");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = ClientId::from("2001:db8:1:2::1".parse::<IpAddr>().expect("ip"));
        let b = ClientId::from("2001:db8:1:2:ffff::9".parse::<IpAddr>().expect("ip"));
        let c = ClientId::from("2001:db8:1:3::1".parse::<IpAddr>().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = ClientId::from("::ffff:192.0.2.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(
            mapped,
            ClientId::from("192.0.2.1".parse::<IpAddr>().expect("ip"))
        );
        assert_ne!(
            ClientId::from("::".parse::<IpAddr>().expect("ip")),
            ClientId::from("0.0.0.0".parse::<IpAddr>().expect("ip"))
        );
    }

    #[test]
    fn the_failure_table_is_bounded() {
        let failures = AuthFailures::new(5, 4);
        let t0 = Instant::now();
        for i in 0..100u32 {
            let client = ClientId::from(IpAddr::from(std::net::Ipv4Addr::from(i)));
            failures.record_failure(client, t0 + Duration::from_millis(u64::from(i)));
        }
        assert!(failures.tracked_clients() <= 4);
    }
}
