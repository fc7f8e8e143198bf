//! The rule of every gRPC method: which roles may call it. Ownership (a
//! customer's own orders, wallet and payments) is checked by the handler on
//! top of the rule. A method that is not listed is refused to every role, so
//! a new RPC is closed until it is given a rule here.

use super::Role;

/// What a method asks of its caller's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No token needed: health checks and reflection.
    Open,
    /// A customer (its own records only; the handler checks) or an admin.
    CustomerOrAdmin,
    /// An admin, or another service calling for its own work.
    AdminOrService,
    /// An admin only.
    Admin,
}

impl Rule {
    /// Whether a caller with `role` passes the rule.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Rule::Open => true,
            Rule::CustomerOrAdmin => matches!(role, Role::Customer | Role::Admin),
            Rule::AdminOrService => matches!(role, Role::Admin | Role::Service),
            Rule::Admin => role == Role::Admin,
        }
    }
}

const OPEN_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Every saga RPC and its rule (the README's matrix says the same).
pub const METHODS: &[(&str, Rule)] = &[
    (
        "/saga.order.v1.OrderService/PlaceOrder",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.order.v1.OrderService/GetOrder",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.order.v1.OrderService/ListOrders",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.order.v1.OrderService/CancelOrder",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.order.v1.OrderService/GetOrderOutcomes",
        Rule::AdminOrService,
    ),
    (
        "/saga.order.v1.OrderService/GetOrderHistory",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.order.v1.OrderService/WatchOrder",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.inventory.v1.InventoryService/UpsertProduct",
        Rule::Admin,
    ),
    (
        "/saga.inventory.v1.InventoryService/GetStock",
        Rule::AdminOrService,
    ),
    (
        "/saga.inventory.v1.InventoryService/ListStock",
        Rule::AdminOrService,
    ),
    (
        "/saga.inventory.v1.InventoryService/AdjustStock",
        Rule::Admin,
    ),
    (
        "/saga.inventory.v1.InventoryService/ReserveStock",
        Rule::AdminOrService,
    ),
    (
        "/saga.inventory.v1.InventoryService/ReleaseStock",
        Rule::AdminOrService,
    ),
    (
        "/saga.inventory.v1.InventoryService/CommitStock",
        Rule::AdminOrService,
    ),
    (
        "/saga.payment.v1.PaymentService/GetWallet",
        Rule::CustomerOrAdmin,
    ),
    ("/saga.payment.v1.PaymentService/TopUp", Rule::Admin),
    (
        "/saga.payment.v1.PaymentService/GetPayment",
        Rule::CustomerOrAdmin,
    ),
    (
        "/saga.reservation.v1.ReservationService/CreateSlot",
        Rule::Admin,
    ),
    (
        "/saga.reservation.v1.ReservationService/GetSlot",
        Rule::AdminOrService,
    ),
    (
        "/saga.reservation.v1.ReservationService/HoldSlot",
        Rule::AdminOrService,
    ),
    (
        "/saga.reservation.v1.ReservationService/ReleaseSlot",
        Rule::AdminOrService,
    ),
    (
        "/saga.reservation.v1.ReservationService/ListSlots",
        Rule::AdminOrService,
    ),
];

/// The rule of the method at `path`; `None` for a method with no rule,
/// which every role is refused.
pub fn rule(path: &str) -> Option<Rule> {
    if OPEN_SERVICES.iter().any(|p| path.starts_with(p)) {
        return Some(Rule::Open);
    }
    METHODS
        .iter()
        .find(|(method, _)| *method == path)
        .map(|(_, rule)| *rule)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Every method the protos declare has a rule, and every rule names a
    /// method that exists: the table and the API cannot drift apart.
    #[test]
    fn every_rpc_has_a_rule_and_every_rule_an_rpc() {
        let fds = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let mut declared = Vec::new();
        for file in &fds.file {
            for service in &file.service {
                for method in &service.method {
                    declared.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        for path in &declared {
            assert!(rule(path).is_some(), "{path} has no rule");
        }
        for (path, _) in METHODS {
            assert!(declared.iter().any(|d| d == path), "{path} is not an RPC");
        }
        assert_eq!(declared.len(), METHODS.len());
    }

    #[test]
    fn health_is_open_and_unknown_methods_have_no_rule() {
        assert_eq!(rule("/grpc.health.v1.Health/Check"), Some(Rule::Open));
        assert_eq!(rule("/saga.order.v1.OrderService/DropAll"), None);
        assert_eq!(rule("/saga.order.v1.OrderService/PlaceOrderX"), None);
    }

    #[test]
    fn roles_pass_their_rules_only() {
        assert!(Rule::Admin.allows(Role::Admin));
        assert!(!Rule::Admin.allows(Role::Service));
        assert!(!Rule::Admin.allows(Role::Customer));
        assert!(Rule::AdminOrService.allows(Role::Service));
        assert!(!Rule::AdminOrService.allows(Role::Customer));
        assert!(Rule::CustomerOrAdmin.allows(Role::Customer));
        assert!(!Rule::CustomerOrAdmin.allows(Role::Service));
    }
}
