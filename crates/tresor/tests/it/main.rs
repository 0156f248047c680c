//! Integration tests of tresor, linked into one binary: one link of the
//! whole dependency graph instead of one per file keeps CI's disk and time in bounds.
mod canary;
mod cli;
mod cli_aws;
mod common;
mod crash;
