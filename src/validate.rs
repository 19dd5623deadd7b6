//! Checks of settings whose errors name the setting, what it must be and what it was, so that a
//! bad number in a flag or in `run.json` is refused with the fix in view.

/// `Ok` when `ok`; else an error that names the setting, what it must be and what it was.
pub(crate) fn require(
    ok: bool,
    name: &str,
    expected: &str,
    value: impl std::fmt::Display,
) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{name} must be {expected}, got {value}"))
    }
}

/// `Ok` when `value` is a finite number above 0 (a rate or a bound that 0 would disable).
pub(crate) fn require_positive(name: &str, value: f32) -> Result<(), String> {
    require(
        value.is_finite() && value > 0.0,
        name,
        "a finite number > 0",
        value,
    )
}

/// `Ok` when `value` is a finite number, 0 or above (a learning rate, a weight, a decay).
pub(crate) fn require_non_negative(name: &str, value: f32) -> Result<(), String> {
    require(
        value.is_finite() && value >= 0.0,
        name,
        "a finite number >= 0",
        value,
    )
}
