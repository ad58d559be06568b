-- Proxmox VE inventory: stored API secrets, collection runs, and the provider-neutral
-- virtualization tables (one cluster = one `id`, `AGENT/CLUSTER`).

-- API secrets, sealed with the CA passphrase (see ca/src/sealed.rs); never rendered back.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    identity    TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    tls_json    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    changed_by  TEXT NOT NULL
);

-- The latest collection run per device, claimed by one conditional upsert.
CREATE TABLE pve_runs (
    device        TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL,
    bastion       TEXT NOT NULL,
    claimed_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    result        TEXT,
    cluster       TEXT,
    failures_json TEXT
);

CREATE TABLE virt_clusters (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    agent          TEXT NOT NULL,
    provider       TEXT NOT NULL,
    version        TEXT NOT NULL,
    clustered      BIGINT NOT NULL,
    quorate        BIGINT,
    collected_from TEXT NOT NULL,
    changed_at     BIGINT NOT NULL
);

CREATE TABLE virt_nodes (
    cluster         TEXT NOT NULL,
    name            TEXT NOT NULL,
    status          TEXT NOT NULL,
    address         TEXT,
    cpus            BIGINT,
    memory_bytes    BIGINT,
    ssl_fingerprint TEXT,
    PRIMARY KEY (cluster, name)
);

CREATE TABLE virt_guests (
    cluster      TEXT NOT NULL,
    vmid         BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    node         TEXT NOT NULL,
    status       TEXT NOT NULL,
    template     BIGINT NOT NULL,
    cpus         BIGINT,
    memory_bytes BIGINT,
    disk_bytes   BIGINT,
    tags_json    TEXT NOT NULL,
    config_json  TEXT NOT NULL,
    PRIMARY KEY (cluster, vmid)
);
CREATE INDEX virt_guests_name ON virt_guests (name);

CREATE TABLE virt_storage (
    cluster     TEXT NOT NULL,
    node        TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    content     TEXT NOT NULL,
    shared      BIGINT NOT NULL,
    active      BIGINT NOT NULL,
    total_bytes BIGINT,
    PRIMARY KEY (cluster, node, name)
);

CREATE TABLE virt_interfaces (
    cluster      TEXT NOT NULL,
    node         TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    cidr         TEXT,
    active       BIGINT NOT NULL,
    bridge_ports TEXT,
    PRIMARY KEY (cluster, node, name)
);

CREATE TABLE virt_disks (
    cluster    TEXT NOT NULL,
    node       TEXT NOT NULL,
    devpath    TEXT NOT NULL,
    model      TEXT,
    serial     TEXT,
    size_bytes BIGINT,
    kind       TEXT,
    health     TEXT,
    PRIMARY KEY (cluster, node, devpath)
);

-- Ceph: the health per cluster (no row: no Ceph), and its OSDs, pools and file systems.
CREATE TABLE virt_ceph (
    cluster TEXT PRIMARY KEY,
    health  TEXT NOT NULL
);
CREATE TABLE virt_ceph_items (
    cluster TEXT NOT NULL,
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    status  TEXT NOT NULL,
    PRIMARY KEY (cluster, kind, name)
);

-- One row per change of a cluster's inventory (the first collection included).
CREATE TABLE virt_history (
    cluster      TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    run_id       TEXT NOT NULL,
    changes_json TEXT NOT NULL,
    PRIMARY KEY (cluster, seq)
);
