//! End-to-end harness helpers.
