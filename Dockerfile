# syntax=docker/dockerfile:1
# sseplane: multi-stage build; the runtime image is distroless and non-root.

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: build them against stub sources
# so that editing the code does not rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src examples \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > examples/quickbench.rs \
    && cargo build --release --locked --bin sseplane \
    && rm -rf src examples
COPY src ./src
COPY examples ./examples
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin sseplane \
    && cp target/release/sseplane /sseplane

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /sseplane /usr/local/bin/sseplane
USER 65532:65532
ENV SSEPLANE_LOG_FORMAT=json
# 8080: public API (streams, publish); 9090: admin (probes, metrics, diagnostics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/sseplane"]
CMD ["serve"]
