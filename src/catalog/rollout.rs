//! Rollout decisions as pure functions: the device's stable bucket, percentage
//! membership, hardware matching.

use super::model::Hardware;

/// Buckets per rollout: percent has two decimals, so 100.00 % = 10 000 buckets.
pub const BUCKETS: u64 = 10_000;

/// Stable bucket of a device: blake3(product ‖ 0 ‖ device_id) mod 10 000.
pub fn bucket(product: &str, device_id: &str) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(product.as_bytes());
    h.update(&[0]);
    h.update(device_id.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_bytes()[..8]);
    u64::from_le_bytes(first) % BUCKETS
}

/// Percent (0–100, two decimals) as a bucket threshold.
pub fn threshold(percent: f64) -> u64 {
    (percent.clamp(0.0, 100.0) * 100.0).round() as u64
}

/// In the rollout when bucket < percent × 100: stable per device, monotone in percent.
pub fn in_rollout(product: &str, device_id: &str, percent: f64) -> bool {
    bucket(product, device_id) < threshold(percent)
}

/// Every field the product names must equal the device's (case-insensitive). A device
/// that reports no hardware is not checked.
pub fn hardware_matches(product: &Hardware, device: Option<&Hardware>) -> bool {
    let Some(device) = device else {
        return true;
    };
    let field = |want: &Option<String>, got: &Option<String>| match want {
        None => true,
        Some(w) if w.is_empty() => true,
        Some(w) => got.as_deref().is_some_and(|g| g.eq_ignore_ascii_case(w)),
    };
    field(&product.manufacturer, &device.manufacturer)
        && field(&product.family, &device.family)
        && field(&product.sku, &device.sku)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_pinned_to_values_computed_outside_this_code() {
        // printf '%s\0%s' PRODUCT DEVICE | b3sum --no-names; first 8 bytes little-endian
        // mod 10 000 (computed with the b3sum CLI and python, not with this function).
        // Changing them moves devices between rollout waves: never do it silently.
        for (product, device, want) in [
            ("demo-device", "dev-1", 8048),
            ("gw", "device-1", 5111),
            ("gw", "device-42", 4380),
            ("loadtest", "dev-0000001", 8290),
            ("p", "", 8165),
        ] {
            assert_eq!(bucket(product, device), want, "{product}/{device}");
        }
        assert!(in_rollout("gw", "device-42", 43.81) && !in_rollout("gw", "device-42", 43.8));
    }

    #[test]
    fn ten_percent_of_ten_thousand_devices_is_about_a_thousand() {
        let n = (0..10_000)
            .filter(|i| in_rollout("p", &format!("device-{i}"), 10.0))
            .count();
        assert!((900..=1100).contains(&n), "{n}");
        assert_eq!(
            (0..1000)
                .filter(|i| in_rollout("p", &format!("d{i}"), 0.0))
                .count(),
            0
        );
        assert_eq!(
            (0..1000)
                .filter(|i| in_rollout("p", &format!("d{i}"), 100.0))
                .count(),
            1000
        );
    }

    #[test]
    fn hardware_fields_named_by_the_product_must_match() {
        let hw = |m: Option<&str>, s: Option<&str>| Hardware {
            manufacturer: m.map(Into::into),
            family: None,
            sku: s.map(Into::into),
        };
        let product = hw(Some("Contoso"), Some("X1"));
        assert!(hardware_matches(
            &product,
            Some(&hw(Some("contoso"), Some("X1")))
        ));
        assert!(!hardware_matches(
            &product,
            Some(&hw(Some("Contoso"), Some("X2")))
        ));
        assert!(!hardware_matches(&product, Some(&hw(None, Some("X1")))));
        assert!(hardware_matches(&product, None));
        assert!(hardware_matches(
            &hw(None, None),
            Some(&hw(Some("any"), None))
        ));
    }

    proptest! {
        #[test]
        fn rollout_is_stable_and_monotone(id in "[a-z0-9-]{1,40}", p in 0.0f64..100.0, q in 0.0f64..100.0) {
            let (lo, hi) = if p <= q { (p, q) } else { (q, p) };
            prop_assert_eq!(bucket("prod", &id), bucket("prod", &id));
            if in_rollout("prod", &id, lo) {
                prop_assert!(in_rollout("prod", &id, hi));
            }
        }
    }
}
