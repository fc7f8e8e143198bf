//! The gRPC boundary of inventory: proto <-> domain, and the one mapping of
//! errors to status codes.

use saga_shared::idempotency;
use saga_shared::proto::inventory::v1 as pb;
use saga_shared::proto::inventory::v1::inventory_service_server::InventoryService;
use saga_shared::validate;
use tonic::{Request, Response, Status};

use std::collections::HashSet;

use uuid::Uuid;

use crate::domain::{self, AdjustError, Line, OrderHoldState, Product};
use crate::service::{Inventory, InventoryError};
use crate::store::StoredReservation;

pub struct InventoryGrpc {
    pub inventory: Inventory,
}

impl From<Product> for pb::Stock {
    fn from(p: Product) -> Self {
        pb::Stock {
            available: p.available(),
            sku: p.sku,
            name: p.name,
            unit_price_cents: p.unit_price_cents,
            on_hand: p.on_hand,
            reserved: p.reserved,
            sold: p.sold,
            version: p.version,
        }
    }
}

impl From<InventoryError> for Status {
    fn from(e: InventoryError) -> Self {
        match e {
            InventoryError::Invalid(fe) => fe.into(),
            InventoryError::UnknownSku(_) => Status::not_found(e.to_string()),
            InventoryError::Adjust(AdjustError::StaleVersion { .. })
            | InventoryError::Adjust(AdjustError::BelowCommitted { .. })
            | InventoryError::Adjust(AdjustError::OutOfRange { .. })
            | InventoryError::BelongsToSaga(_)
            | InventoryError::ReservationConflict { .. } => {
                Status::failed_precondition(e.to_string())
            }
            InventoryError::UnknownReservation(_) => Status::not_found(e.to_string()),
            InventoryError::Fenced(_) => Status::aborted(format!("{e}; retry")),
            InventoryError::Cache(ref c) => {
                saga_shared::grpc::unavailable("stock cache unavailable", c)
            }
            InventoryError::Db(ref db) => saga_shared::grpc::database("inventory database", db),
        }
    }
}

fn reservation(id: Uuid, r: StoredReservation) -> pb::StockReservation {
    let state = match r.state {
        OrderHoldState::Reserved => pb::ReservationState::Reserved,
        OrderHoldState::Rejected => pb::ReservationState::Rejected,
        OrderHoldState::Released => pb::ReservationState::Released,
        OrderHoldState::Committed => pb::ReservationState::Committed,
    };
    let rejected = r.state == OrderHoldState::Rejected;
    pb::StockReservation {
        reservation_id: id.to_string(),
        state: state as i32,
        lines: r
            .lines
            .into_iter()
            .map(|h| pb::HeldLine {
                sku: h.sku,
                quantity: h.quantity,
                unit_price_cents: h.unit_price_cents,
            })
            .collect(),
        rejected_sku: if rejected {
            r.rejected_sku.unwrap_or_default()
        } else {
            String::new()
        },
        reject_reason: if rejected {
            r.reason.unwrap_or_default()
        } else {
            String::new()
        },
    }
}

/// Checks a direct reservation's lines field by field; sorted by SKU.
fn reservation_lines(
    lines: &[pb::ReservationLine],
    max: usize,
) -> Result<Vec<Line>, validate::FieldError> {
    if lines.is_empty() {
        return Err(validate::FieldError::new(
            "lines",
            "at least one line is required",
        ));
    }
    if lines.len() > max {
        return Err(validate::FieldError::new(
            "lines",
            format!("at most {max} lines, got {}", lines.len()),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        validate::ident(&format!("lines[{i}].sku"), &l.sku, domain::MAX_SKU_LEN)?;
        validate::range(
            &format!("lines[{i}].quantity"),
            l.quantity,
            1,
            domain::MAX_ON_HAND,
        )?;
        if !seen.insert(l.sku.as_str()) {
            return Err(validate::FieldError::new(
                format!("lines[{i}].sku"),
                format!("{:?} appears more than once", l.sku),
            ));
        }
        out.push(Line {
            sku: l.sku.clone(),
            quantity: l.quantity,
        });
    }
    out.sort_by(|a, b| a.sku.cmp(&b.sku));
    Ok(out)
}

const LIST_DEFAULT: i64 = 100;
const LIST_MAX: i64 = 500;

#[tonic::async_trait]
impl InventoryService for InventoryGrpc {
    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn upsert_product(
        &self,
        request: Request<pb::UpsertProductRequest>,
    ) -> Result<Response<pb::UpsertProductResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        crate::domain::validate_product(&r.sku, &r.name, r.unit_price_cents)?;
        let sku = r.sku.clone();
        let inventory = self.inventory.clone();
        let pool = &self.inventory.store().pool;
        let answer = idempotency::once(pool, "inventory.UpsertProduct", key, r, |tx, r| {
            Box::pin(async move {
                let (product, created) = inventory
                    .upsert_product_in(tx, &r.sku, &r.name, r.unit_price_cents)
                    .await?;
                Ok(pb::UpsertProductResponse {
                    stock: Some(product.into()),
                    created,
                })
            })
        })
        .await?;
        if !answer.replayed && answer.response.created {
            self.inventory.after_create(&sku).await;
        }
        Ok(Response::new(answer.response))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::GetStockResponse>, Status> {
        let product = self.inventory.product(&request.into_inner().sku).await?;
        Ok(Response::new(pb::GetStockResponse {
            stock: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn list_stock(
        &self,
        request: Request<pb::ListStockRequest>,
    ) -> Result<Response<pb::ListStockResponse>, Status> {
        let r = request.into_inner();
        if !r.skus.is_empty() {
            if r.skus.len() as i64 > LIST_MAX {
                return Err(validate::FieldError::new(
                    "skus",
                    format!("at most {LIST_MAX} SKUs, got {}", r.skus.len()),
                )
                .into());
            }
            for (i, sku) in r.skus.iter().enumerate() {
                validate::ident(&format!("skus[{i}]"), sku, domain::MAX_SKU_LEN)?;
            }
            let products = self.inventory.products(&r.skus).await?;
            return Ok(Response::new(pb::ListStockResponse {
                stocks: products.into_iter().map(Into::into).collect(),
                next_page_token: String::new(),
            }));
        }
        let limit = validate::page_size("page_size", r.page_size, LIST_DEFAULT, LIST_MAX)?;
        if !r.page_token.is_empty() {
            validate::ident("page_token", &r.page_token, domain::MAX_SKU_LEN)?;
        }
        let products = self
            .inventory
            .product_page(&r.page_token, limit + 1)
            .await?;
        let (products, next_page_token) =
            saga_shared::grpc::page(products, limit, |p| p.sku.clone());
        Ok(Response::new(pb::ListStockResponse {
            stocks: products.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let sku = r.sku.clone();
        // The key (if any) and the adjustment commit together: a retry of a
        // request that succeeded gets its answer, not a stale-version error.
        let inventory = self.inventory.clone();
        let pool = &self.inventory.store().pool;
        let answer = idempotency::once(pool, "inventory.AdjustStock", key, r, |tx, r| {
            Box::pin(async move {
                let product = inventory
                    .adjust_in(tx, &r.sku, r.delta, r.expected_version)
                    .await?;
                Ok(pb::AdjustStockResponse {
                    stock: Some(product.into()),
                })
            })
        })
        .await?;
        if !answer.replayed {
            self.inventory.after_adjust(&sku).await;
        }
        Ok(Response::new(answer.response))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let id = validate::uuid("reservation_id", &r.reservation_id)?;
        let pool = &self.inventory.store().pool;
        let answer = idempotency::around(pool, "inventory.ReserveStock", key, &r, || async {
            // Checked against this moment's limit once the key is known new:
            // a retry gets its first answer even if the limit changed since.
            let lines = reservation_lines(&r.lines, self.inventory.settings().max_lines)?;
            let stored = self.inventory.reserve_direct(id, lines).await?;
            Ok(pb::ReserveStockResponse {
                reservation: Some(reservation(id, stored)),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn release_stock(
        &self,
        request: Request<pb::ReleaseStockRequest>,
    ) -> Result<Response<pb::ReleaseStockResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let id = validate::uuid("reservation_id", &r.reservation_id)?;
        let pool = &self.inventory.store().pool;
        let answer = idempotency::around(pool, "inventory.ReleaseStock", key, &r, || async {
            let stored = self.inventory.release_direct(id).await?;
            Ok(pb::ReleaseStockResponse {
                reservation: Some(reservation(id, stored)),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    async fn commit_stock(
        &self,
        request: Request<pb::CommitStockRequest>,
    ) -> Result<Response<pb::CommitStockResponse>, Status> {
        let key = idempotency::key_of(&request)?;
        let r = request.into_inner();
        let id = validate::uuid("reservation_id", &r.reservation_id)?;
        let pool = &self.inventory.store().pool;
        let answer = idempotency::around(pool, "inventory.CommitStock", key, &r, || async {
            let stored = self.inventory.commit_direct(id).await?;
            Ok(pb::CommitStockResponse {
                reservation: Some(reservation(id, stored)),
            })
        })
        .await?;
        Ok(Response::new(answer))
    }
}
