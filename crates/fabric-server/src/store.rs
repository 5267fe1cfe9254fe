//! The store backend the server runs on. One concrete type today (SQLite);
//! the Redis backend joins as an `AnyStore` enum when it lands.

pub type Store = fabric_store::SqliteStore;
