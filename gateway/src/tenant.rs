//! A tenant as requests see it: who, which scheduling tier, and its rate limiters.

use rosetta_config::{TenantConfig, Tier};

use crate::ratelimit::{LimitClock, Sharing, TenantLimiter};

#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub tier: Tier,
    pub limiter: TenantLimiter,
}

impl Tenant {
    pub fn new(config: &TenantConfig, clock: &LimitClock) -> Self {
        Self::shared(config, clock, &Sharing::default())
    }

    /// A tenant whose limits are kept as `sharing` says.
    pub fn shared(config: &TenantConfig, clock: &LimitClock, sharing: &Sharing) -> Self {
        Self {
            id: config.id.clone(),
            tier: config.tier,
            limiter: TenantLimiter::shared(&config.id, &config.limits, clock, sharing),
        }
    }

    /// The engine scheduling priority of its requests (0 is served first).
    pub fn priority(&self) -> u8 {
        match self.tier {
            Tier::High => 0,
            Tier::Normal => rosetta_engine::DEFAULT_PRIORITY,
            Tier::Low => rosetta_engine::DEFAULT_PRIORITY + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_map_to_engine_priorities_in_order() {
        let tenant = |tier: &str| {
            let config: TenantConfig =
                serde_yaml::from_str(&format!("{{id: t, tier: {tier}}}")).expect("tenant yaml");
            Tenant::new(&config, &LimitClock::manual())
        };
        let (high, normal, low) = (tenant("high"), tenant("normal"), tenant("low"));
        // The scheduler serves lower numbers first and preempts higher ones first.
        assert!(high.priority() < normal.priority() && normal.priority() < low.priority());
        assert_eq!(normal.priority(), rosetta_engine::DEFAULT_PRIORITY);
    }
}
