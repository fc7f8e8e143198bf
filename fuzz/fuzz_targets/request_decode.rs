//! Request bodies as a service receives them: bytes that do not decode as
//! the request get INVALID_ARGUMENT from the codec's error path, which walks
//! the bytes itself to name a field whose string is not UTF-8. It never
//! panics and always answers INVALID_ARGUMENT.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use saga_shared::proto::{
    inventory::v1 as inv, order::v1 as ord, payment::v1 as pay, reservation::v1 as rsv,
};

fn check<M: Message + prost::Name + Default>(bytes: &[u8]) {
    if let Err(e) = M::decode(bytes) {
        let status = saga_shared::codec::decode_error(&M::full_name(), bytes, &e);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % 12 {
        0 => check::<ord::PlaceOrderRequest>(body),
        1 => check::<ord::ListOrdersRequest>(body),
        2 => check::<ord::GetOrderOutcomesRequest>(body),
        3 => check::<ord::WatchOrderRequest>(body),
        4 => check::<inv::UpsertProductRequest>(body),
        5 => check::<inv::ListStockRequest>(body),
        6 => check::<inv::ReserveStockRequest>(body),
        7 => check::<inv::AdjustStockRequest>(body),
        8 => check::<pay::TopUpRequest>(body),
        9 => check::<rsv::CreateSlotRequest>(body),
        10 => check::<rsv::HoldSlotRequest>(body),
        _ => check::<ord::CancelOrderRequest>(body),
    }
});
