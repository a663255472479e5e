//! Time as the router's state machines see it: a number, handed in.
//!
//! The cores (`core`, `client`) never read a clock. Every entry point takes
//! the current [`Time`], and every deadline they keep is a `Time` they
//! compare against it, so that the same code runs on the real clock (the
//! shard driver's [`Clock`]) and on the virtual clock of a seeded
//! simulation (`sim`), where a failing run replays exactly.

use std::fmt;
use std::ops::{Add, AddAssign};
use std::time::{Duration, Instant};

/// A point in time: nanoseconds since the clock that produced it started.
/// Only times from the same clock are comparable.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);
    /// Later than any deadline a router sets.
    pub const NEVER: Time = Time(u64::MAX);

    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }

    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this is; zero when it is not after it.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;

    fn add(self, duration: Duration) -> Time {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, duration: Duration) {
        *self = *self + duration;
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Time::NEVER {
            return f.write_str("never");
        }
        write!(
            f,
            "{}.{:06}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000 / 1000
        )
    }
}

/// The real clock: monotonic time since it was created.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Now, on this clock.
    pub fn now(&self) -> Time {
        Time::ZERO + self.start.elapsed()
    }

    /// How long from now until `deadline` (zero when it has passed).
    pub fn until(&self, deadline: Time) -> Duration {
        deadline.since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_millis(5);
        assert_eq!(t + Duration::from_millis(5), Time::from_millis(10));
        assert_eq!(t.since(Time::from_millis(7)), Duration::ZERO);
        assert_eq!(Time::from_millis(7).since(t), Duration::from_millis(2));
        assert_eq!(Time::NEVER + Duration::from_secs(1), Time::NEVER);
        assert_eq!(format!("{:?}", Time::from_millis(1500)), "1.500000s");
    }
}
