//! The gRPC boundary of reservation: proto <-> domain, and the one mapping
//! of errors to status codes.

use saga_shared::idempotency;
use saga_shared::proto::reservation::v1 as pb;
use saga_shared::proto::reservation::v1::reservation_service_server::ReservationService;
use saga_shared::validate;
use tonic::{Request, Response, Status};

use crate::domain::{self, BookingState, DirectHold, Slot};
use crate::service::{ReservationError, Reservations};

pub struct ReservationGrpc {
    pub reservations: Reservations,
}

impl From<ReservationError> for Status {
    fn from(e: ReservationError) -> Self {
        match e {
            ReservationError::Invalid(fe) => fe.into(),
            ReservationError::NotFound(msg) => Status::not_found(msg),
            ReservationError::Concurrent(_) => Status::aborted(format!("{e}; retry")),
            ReservationError::CannotConfirm { .. }
            | ReservationError::BelongsToSaga(_)
            | ReservationError::HoldConflict { .. } => Status::failed_precondition(e.to_string()),
            ReservationError::Db(ref db) => saga_shared::grpc::database("reservation database", db),
        }
    }
}

impl From<Slot> for pb::Slot {
    fn from(s: Slot) -> Self {
        pb::Slot {
            available: s.available(),
            slot_id: s.id.to_string(),
            name: s.name,
            capacity: s.capacity,
            held: s.held,
            confirmed: s.confirmed,
            created_at: Some(saga_shared::time::to_proto(s.created_at)),
        }
    }
}

impl From<DirectHold> for pb::SlotHold {
    fn from(h: DirectHold) -> Self {
        let state = match h.state {
            BookingState::Held | BookingState::Confirmed => pb::HoldState::Held,
            BookingState::Released => pb::HoldState::Released,
            BookingState::Rejected => pb::HoldState::Rejected,
        };
        pb::SlotHold {
            hold_id: h.hold_id.to_string(),
            slot_id: h.slot_id.map(|s| s.to_string()).unwrap_or_default(),
            state: state as i32,
            reason: h.reason.unwrap_or_default(),
            created_at: Some(saga_shared::time::to_proto(h.created_at)),
            updated_at: Some(saga_shared::time::to_proto(h.updated_at)),
        }
    }
}

const LIST_DEFAULT: i64 = 100;
const LIST_MAX: i64 = 500;

#[tonic::async_trait]
impl ReservationService for ReservationGrpc {
    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn create_slot(
        &self,
        request: Request<pb::CreateSlotRequest>,
    ) -> Result<Response<pb::CreateSlotResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        domain::validate_new_slot(&r.name, r.capacity)?;
        let reservations = self.reservations.clone();
        let pool = &self.reservations.store().pool;
        let answer = idempotency::once(pool, "reservation.CreateSlot", key, r, |tx, r| {
            Box::pin(async move {
                let slot = reservations.create_slot_in(tx, &r.name, r.capacity).await?;
                Ok(pb::CreateSlotResponse {
                    slot: Some(slot.into()),
                })
            })
        })
        .await?;
        Ok(Response::new(answer.response))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn hold_slot(
        &self,
        request: Request<pb::HoldSlotRequest>,
    ) -> Result<Response<pb::HoldSlotResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let hold_id = validate::uuid("hold_id", &r.hold_id)?;
        let slot = validate::uuid("slot_id", &r.slot_id)?;
        let pool = &self.reservations.store().pool;
        let answer = idempotency::around(pool, "reservation.HoldSlot", key, &r, || async {
            let hold = self.reservations.hold_direct(hold_id, slot).await?;
            Ok(pb::HoldSlotResponse {
                hold: Some(hold.into()),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn release_slot(
        &self,
        request: Request<pb::ReleaseSlotRequest>,
    ) -> Result<Response<pb::ReleaseSlotResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let hold_id = validate::uuid("hold_id", &r.hold_id)?;
        let pool = &self.reservations.store().pool;
        let answer = idempotency::around(pool, "reservation.ReleaseSlot", key, &r, || async {
            let hold = self.reservations.release_direct(hold_id).await?;
            Ok(pb::ReleaseSlotResponse {
                hold: Some(hold.into()),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_slot(
        &self,
        request: Request<pb::GetSlotRequest>,
    ) -> Result<Response<pb::GetSlotResponse>, Status> {
        let id = validate::uuid("slot_id", &request.into_inner().slot_id)?;
        let slot = self.reservations.slot(id).await?;
        Ok(Response::new(pb::GetSlotResponse {
            slot: Some(slot.into()),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list_slots(
        &self,
        request: Request<pb::ListSlotsRequest>,
    ) -> Result<Response<pb::ListSlotsResponse>, Status> {
        let r = request.into_inner();
        let limit = validate::page_size("page_size", r.page_size, LIST_DEFAULT, LIST_MAX)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(validate::uuid("page_token", &r.page_token)?)
        };
        let slots = self.reservations.slots(after, limit + 1).await?;
        let (slots, next_page_token) = saga_shared::grpc::page(slots, limit, |s| s.id.to_string());
        Ok(Response::new(pb::ListSlotsResponse {
            slots: slots.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
