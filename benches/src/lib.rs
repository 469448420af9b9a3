//! Load tools live in `src/bin/`; criterion benchmarks in `benches/`.
