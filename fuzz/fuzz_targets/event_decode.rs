//! Event bodies as a consumer receives them: any bytes, under any event
//! type. Decoding never panics, and what decodes encodes back to an event
//! that decodes to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use saga_shared::bus::{EventType, SagaEvent};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let event_type = EventType::ALL[usize::from(pick) % EventType::ALL.len()];
    if let Ok(event) = SagaEvent::decode(event_type, body) {
        assert_eq!(event.event_type(), event_type);
        let again =
            SagaEvent::decode(event_type, &event.encode()).expect("re-encoded event decodes");
        assert_eq!(again, event);
        let _ = event.order_id();
    }
});
