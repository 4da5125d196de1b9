"""Benchmarks and projections: latency suites against peers (`runner`, `contenders`, `stages`), model FLOPs
(`flops`), machine facts and telemetry (`machine`), timeline plots (`timeline`), and the roofline plan (`plan`)."""
