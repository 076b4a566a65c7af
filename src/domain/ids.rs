//! Random identifiers (request ids, session ids, token ids, user ids) drawn from rand's
//! thread-local CSPRNG (ChaCha, seeded and periodically reseeded from the operating system),
//! not from one `getrandom(2)` system call per identifier as `Uuid::new_v4` and `Uuid::now_v7`
//! do: a login flow draws six of them.

use uuid::{Builder, Uuid};

/// A random (version 4) UUID.
pub fn random_uuid() -> Uuid {
    Builder::from_random_bytes(rand::random()).into_uuid()
}

/// A time-ordered (version 7) UUID for `unix_millis`, with 74 random bits.
pub fn time_ordered_uuid(unix_millis: u64) -> Uuid {
    Builder::from_unix_timestamp_millis(unix_millis, &rand::random()).into_uuid()
}

/// A time-ordered (version 7) UUID for now.
pub fn new_time_ordered_uuid() -> Uuid {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64);
    time_ordered_uuid(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_uuids_are_version_4_and_distinct() {
        let a = random_uuid();
        let b = random_uuid();
        assert_eq!(a.get_version_num(), 4);
        assert_eq!(a.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(a, b);
    }

    #[test]
    fn time_ordered_uuids_carry_their_time_and_sort_by_it() {
        let early = time_ordered_uuid(1_700_000_000_000);
        let late = time_ordered_uuid(1_700_000_000_001);
        assert_eq!(early.get_version_num(), 7);
        assert_eq!(early.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = early.get_timestamp().expect("v7 timestamp").to_unix();
        assert_eq!((secs, nanos), (1_700_000_000, 0));
        assert!(early < late);
        assert_ne!(time_ordered_uuid(5), time_ordered_uuid(5));
        assert_eq!(new_time_ordered_uuid().get_version_num(), 7);
    }
}
