"""The payload shapes of the earlier system's docs (seeds 001 and 004), verbatim."""

SEED_001_RECORD = {
    "timestamp": "2025-10-12T21:40:00",
    "server_name": "ppml0001",
    "cpu_percent": 45.2,
    "memory_percent": 62.1,
    "disk_percent": 35.8,
    "load_average": 2.3,
    "status": "healthy",
    "profile": "ml_compute",
}
SEED_004_RECORD = {
    "timestamp": "2025-10-13T16:00:00Z",
    "server_name": "ppdb001",
    "cpu_pct": 45.2,
    "mem_pct": 67.8,
    "disk_io_mb_s": 123.4,
    "latency_ms": 12.5,
    "state": "healthy",
}
