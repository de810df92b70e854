//! Polite-drain HTTP serving (being written).
