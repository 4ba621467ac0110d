//! # MySQL and MariaDB: the same guarantees through a switchover (feature `mysql`)
