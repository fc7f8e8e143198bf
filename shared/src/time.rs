//! Conversions between `chrono` times and `prost_types::{Timestamp, Duration}`.

use chrono::{DateTime, SubsecRound, Utc};

/// The time now, to the microsecond: what Postgres keeps of it. A time a
/// call answers with is then the time a later read of the row answers
/// with (the database truncates the nanoseconds of `Utc::now()`).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn to_proto(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_proto(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

/// A span of time as a protobuf Duration (negative spans too, as protobuf
/// allows: seconds and nanos of the same sign).
pub fn delta_to_proto(d: chrono::TimeDelta) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.num_seconds(),
        nanos: d.subsec_nanos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_to_the_microsecond() {
        assert_eq!(now().timestamp_subsec_nanos() % 1_000, 0);
    }

    #[test]
    fn spans_keep_one_sign_in_seconds_and_nanos() {
        let d = delta_to_proto(chrono::TimeDelta::milliseconds(1_500));
        assert_eq!((d.seconds, d.nanos), (1, 500_000_000));
        let d = delta_to_proto(chrono::TimeDelta::milliseconds(-1_500));
        assert_eq!((d.seconds, d.nanos), (-1, -500_000_000));
    }
}
