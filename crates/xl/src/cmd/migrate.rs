//! Save, restore and migration (`save`, `restore`, `migrate`, `migrate-receive`).

use crate::cmdtable::Handler;

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    let _ = name;
    None
}
