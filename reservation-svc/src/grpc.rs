//! The gRPC boundary of reservation.

use saga_shared::idempotency::{self, Begin};
use saga_shared::proto::reservation::v1 as pb;
use saga_shared::proto::reservation::v1::reservation_service_server::ReservationService;
use saga_shared::validate;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::{self, Slot};
use crate::store::{self, Store};

pub struct ReservationGrpc {
    store: Store,
}

impl ReservationGrpc {
    pub fn new(store: Store) -> Self {
        Self { store }
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

fn db(e: sqlx::Error) -> Status {
    saga_shared::grpc::database("reservation database", &e)
}

const LIST_DEFAULT: i64 = 100;
const LIST_MAX: i64 = 500;

#[tonic::async_trait]
impl ReservationService for ReservationGrpc {
    async fn create_slot(
        &self,
        request: Request<pb::CreateSlotRequest>,
    ) -> Result<Response<pb::CreateSlotResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        domain::validate_new_slot(&r.name, r.capacity)?;
        let mut tx = self.store.pool().begin().await.map_err(db)?;
        let ticket = match idempotency::begin(&mut tx, "reservation.CreateSlot", key, &r).await? {
            Begin::Replay(response) => return Ok(Response::new(response)),
            Begin::Proceed(ticket) => ticket,
        };
        let slot = store::insert_slot(&mut tx, Uuid::now_v7(), r.name.trim(), r.capacity)
            .await
            .map_err(db)?;
        let response = pb::CreateSlotResponse {
            slot: Some(slot.into()),
        };
        ticket.complete(&mut tx, &response).await?;
        tx.commit().await.map_err(db)?;
        Ok(Response::new(response))
    }

    async fn get_slot(
        &self,
        request: Request<pb::GetSlotRequest>,
    ) -> Result<Response<pb::GetSlotResponse>, Status> {
        let id = validate::uuid("slot_id", &request.into_inner().slot_id)?;
        let slot = self
            .store
            .slot(id)
            .await
            .map_err(db)?
            .ok_or_else(|| Status::not_found(format!("slot_id: no slot {id}")))?;
        Ok(Response::new(pb::GetSlotResponse {
            slot: Some(slot.into()),
        }))
    }

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
        let slots = self.store.list(after, limit + 1).await.map_err(db)?;
        let (slots, next_page_token) = saga_shared::grpc::page(slots, limit, |s| s.id.to_string());
        Ok(Response::new(pb::ListSlotsResponse {
            slots: slots.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}
