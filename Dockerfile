# Multi-stage build of the four services and sagactl. One image per service:
#   docker build --target order-svc -t saga/order-svc .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p order-svc -p inventory-svc -p payment-svc -p reservation-svc -p sagactl \
 && mkdir -p /out \
 && cp target/release/order-svc target/release/inventory-svc target/release/payment-svc \
       target/release/reservation-svc target/release/sagactl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 saga
COPY --from=build /out/ /usr/local/bin/
USER saga

FROM runtime AS order-svc
EXPOSE 50051 9091
ENTRYPOINT ["/usr/local/bin/order-svc"]

FROM runtime AS inventory-svc
EXPOSE 50052 9092
ENTRYPOINT ["/usr/local/bin/inventory-svc"]

FROM runtime AS payment-svc
EXPOSE 50053 9093
ENTRYPOINT ["/usr/local/bin/payment-svc"]

FROM runtime AS reservation-svc
EXPOSE 50054 9094
ENTRYPOINT ["/usr/local/bin/reservation-svc"]

FROM runtime AS sagactl
ENTRYPOINT ["/usr/local/bin/sagactl"]
