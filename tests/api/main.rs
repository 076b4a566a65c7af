//! Integration tests: one binary. Each scenario runs against the embedded backends (in-process
//! store + SQLite) and, with two app instances sharing them, against a real Redis + PostgreSQL,
//! a real Redis Cluster + PostgreSQL and a real Redis + MariaDB. `scripts/test.sh` starts those
//! servers and sets `TEST_REDIS_URL`, `TEST_REDIS_CLUSTER_URL`, `TEST_POSTGRES_URL` and
//! `TEST_MARIADB_URL`.

mod helpers;

mod app_attest;
mod captcha;
mod cli;
mod contract;
mod db;
mod delivery;
mod drain;
mod events;
mod failover;
mod first_hour;
mod flows;
mod hardening;
mod http_errors;
mod integrity;
mod layers;
mod limits;
mod mariadb;
mod messaging;
mod observability;
mod operators;
mod outages;
mod production;
mod pumping;
mod redis_keys;
mod standin;
mod store;
mod test_numbers;
mod tokens;
