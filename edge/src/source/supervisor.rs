//! The source supervisor (being built).
