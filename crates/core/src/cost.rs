//! What a request costs: the tokens it used times its model's prices, in
//! nano-dollars, computed with integers only.
//!
//! A price is held as a `TokenPrice`, pico-dollars (10⁻¹² USD) per token.
//! That is the same number as nano-dollars per thousand tokens, and as
//! micro-dollars per million tokens, so any price written in USD per million
//! tokens with up to six decimals is held exactly ($2.50 / Mtok is
//! 2,500,000). A request's cost is a sum of integer products, rounded up to
//! the next nano-dollar once, at the end: no rounding error accumulates
//! within a request, and none across requests either, since each cost is a
//! whole number of nano-dollars.

use crate::Usage;

/// US dollars times 10⁹.
pub type Nanos = u64;

/// Pico-dollars in one nano-dollar.
const PICOS_PER_NANO: u128 = 1_000;

/// A price per token, in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenPrice {
    picos_per_token: u64,
}

impl TokenPrice {
    pub const ZERO: TokenPrice = TokenPrice { picos_per_token: 0 };

    /// The highest price `from_usd_per_mtok` accepts: one dollar a token,
    /// far above any model's, and a bound that keeps every product of a
    /// price and a token count well inside `u128`.
    pub const MAX_USD_PER_MTOK: f64 = 1_000_000.0;

    /// A price in pico-dollars per token (equally: nano-dollars per thousand
    /// tokens, micro-dollars per million tokens).
    pub const fn from_picos_per_token(picos_per_token: u64) -> TokenPrice {
        TokenPrice { picos_per_token }
    }

    /// A price given in USD per million tokens, the unit vendors publish.
    /// Exact for up to six decimals; finer fractions round to the nearest
    /// pico-dollar per token. `None` when the number is negative, not
    /// finite, or above `MAX_USD_PER_MTOK`.
    pub fn from_usd_per_mtok(usd_per_mtok: f64) -> Option<TokenPrice> {
        if !usd_per_mtok.is_finite() || !(0.0..=Self::MAX_USD_PER_MTOK).contains(&usd_per_mtok) {
            return None;
        }
        // At most 10¹² here, so the float holds the product to well under
        // half a unit and the cast neither truncates nor saturates.
        let picos = (usd_per_mtok * 1_000_000.0).round() as u64;
        Some(TokenPrice::from_picos_per_token(picos))
    }

    pub const fn picos_per_token(self) -> u64 {
        self.picos_per_token
    }

    /// The price in USD per million tokens, for display.
    pub fn usd_per_mtok(self) -> f64 {
        self.picos_per_token as f64 / 1_000_000.0
    }

    /// Pico-dollars for `tokens` tokens at this price.
    fn picos_for(self, tokens: u64) -> u128 {
        u128::from(tokens) * u128::from(self.picos_per_token)
    }
}

/// A model's prices for each kind of token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Rates {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input: TokenPrice,
    /// Output tokens, hidden reasoning included.
    pub output: TokenPrice,
    /// Input tokens read from the provider's prompt cache; `None` bills them
    /// as `input`.
    pub cached_input: Option<TokenPrice>,
    /// Input tokens written to the provider's prompt cache (Anthropic's
    /// cache creation); `None` bills them as `input`.
    pub cache_write: Option<TokenPrice>,
    /// Output tokens spent on hidden reasoning, where a model prices them
    /// apart (a part of `output` all the same); `None` bills them as
    /// `output`.
    pub reasoning: Option<TokenPrice>,
}

impl Rates {
    /// Rates from prices in USD per million tokens. `None` when any of them
    /// is refused by `TokenPrice::from_usd_per_mtok`.
    pub fn from_usd_per_mtok(
        input: f64,
        output: f64,
        cached_input: Option<f64>,
        cache_write: Option<f64>,
        reasoning: Option<f64>,
    ) -> Option<Rates> {
        let optional = |price: Option<f64>| match price {
            Some(price) => TokenPrice::from_usd_per_mtok(price).map(Some),
            None => Some(None),
        };
        Some(Rates {
            input: TokenPrice::from_usd_per_mtok(input)?,
            output: TokenPrice::from_usd_per_mtok(output)?,
            cached_input: optional(cached_input)?,
            cache_write: optional(cache_write)?,
            reasoning: optional(reasoning)?,
        })
    }

    fn cached_input_or_input(&self) -> TokenPrice {
        self.cached_input.unwrap_or(self.input)
    }

    fn cache_write_or_input(&self) -> TokenPrice {
        self.cache_write.unwrap_or(self.input)
    }

    fn reasoning_or_output(&self) -> TokenPrice {
        self.reasoning.unwrap_or(self.output)
    }
}

/// The cost of a finished request, in nano-dollars, rounded up.
///
/// `usage.input_tokens` counts every input token; `cached_input_tokens` (read
/// from the prompt cache) and `cache_write_tokens` (written to it; callers
/// pass `usage.cache_write_tokens`) are parts of it, billed at their own
/// rates, and the rest is billed at `input`. `output_tokens` already
/// includes `reasoning_tokens`, which are billed at `reasoning` (or as
/// output) and the rest at `output`: never twice. A count the upstream did not report counts as zero. When the
/// reported parts exceed the reported input (a broken upstream), the parts
/// are billed as reported and no uncached input remains: the cost follows
/// what the provider says it served, and never goes negative.
pub fn request_cost(usage: &Usage, cache_write_tokens: Option<u64>, rates: &Rates) -> Nanos {
    let input = usage.input_tokens.unwrap_or(0);
    let cached = usage.cached_input_tokens.unwrap_or(0);
    let written = cache_write_tokens.unwrap_or(0);
    let uncached = input.saturating_sub(cached).saturating_sub(written);
    let output = usage.output_tokens.unwrap_or(0);
    let reasoning = usage.reasoning_tokens.unwrap_or(0).min(output);
    let picos = rates
        .input
        .picos_for(uncached)
        .saturating_add(rates.cached_input_or_input().picos_for(cached))
        .saturating_add(rates.cache_write_or_input().picos_for(written))
        .saturating_add(rates.output.picos_for(output.saturating_sub(reasoning)))
        .saturating_add(rates.reasoning_or_output().picos_for(reasoning));
    round_up_to_nanos(picos)
}

/// The most a request can cost before it is sent, for a budget reservation:
/// at most `prompt_token_bound` input tokens and `max_output_tokens` output
/// tokens. Input is priced at the uncached input price, or at the cache
/// write price when that is higher (as Anthropic's is), so that the bound
/// holds whatever part of the prompt the provider caches; output at the
/// output or reasoning price, whichever is higher, so that it holds
/// however much of it is reasoning.
pub fn worst_case_cost(prompt_token_bound: u64, max_output_tokens: u64, rates: &Rates) -> Nanos {
    let input_price = rates.input.max(rates.cache_write_or_input());
    let output_price = rates.output.max(rates.reasoning_or_output());
    let picos = input_price
        .picos_for(prompt_token_bound)
        .saturating_add(output_price.picos_for(max_output_tokens));
    round_up_to_nanos(picos)
}

fn round_up_to_nanos(picos: u128) -> Nanos {
    Nanos::try_from(picos.div_ceil(PICOS_PER_NANO)).unwrap_or(Nanos::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(price: f64) -> TokenPrice {
        TokenPrice::from_usd_per_mtok(price).expect("a valid price")
    }

    fn usage(input: Option<u64>, cached: Option<u64>, output: Option<u64>) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_input_tokens: cached,
            reasoning_tokens: None,
            cache_write_tokens: None,
        }
    }

    /// gpt-4o's prices: $2.50 in, $10 out, $1.25 cached.
    fn gpt_4o() -> Rates {
        Rates {
            input: usd(2.5),
            output: usd(10.0),
            cached_input: Some(usd(1.25)),
            cache_write: None,
            reasoning: None,
        }
    }

    /// Claude Sonnet 4.6's: $3 in, $15 out, $0.30 cache read, $3.75 write.
    fn sonnet() -> Rates {
        Rates {
            input: usd(3.0),
            output: usd(15.0),
            cached_input: Some(usd(0.3)),
            cache_write: Some(usd(3.75)),
            reasoning: None,
        }
    }

    #[test]
    fn prices_in_usd_per_mtok_are_held_exactly() {
        assert_eq!(usd(2.5).picos_per_token(), 2_500_000);
        assert_eq!(usd(0.15).picos_per_token(), 150_000);
        assert_eq!(usd(0.00875).picos_per_token(), 8_750);
        assert_eq!(usd(0.0028).picos_per_token(), 2_800);
        assert_eq!(usd(0.0).picos_per_token(), 0);
        assert_eq!(usd(1_000_000.0).picos_per_token(), 1_000_000_000_000);
        assert_eq!(usd(0.1375).usd_per_mtok(), 0.1375);
    }

    #[test]
    fn negative_non_finite_and_absurd_prices_are_refused() {
        for price in [
            -0.01,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1_000_000.5,
        ] {
            assert_eq!(TokenPrice::from_usd_per_mtok(price), None, "{price}");
        }
        assert_eq!(
            Rates::from_usd_per_mtok(1.0, 2.0, Some(-1.0), None, None),
            None
        );
        assert_eq!(
            Rates::from_usd_per_mtok(1.0, 2.0, None, Some(f64::NAN), None),
            None
        );
        assert_eq!(
            Rates::from_usd_per_mtok(1.0, 2.0, None, None, Some(-3.0)),
            None
        );
        assert_eq!(
            Rates::from_usd_per_mtok(2.5, 10.0, Some(1.25), None, None),
            Some(gpt_4o())
        );
    }

    #[test]
    fn a_million_input_tokens_at_two_fifty_cost_two_and_a_half_dollars() {
        let cost = request_cost(&usage(Some(1_000_000), None, None), None, &gpt_4o());
        assert_eq!(cost, 2_500_000_000);
    }

    #[test]
    fn input_and_output_add_up() {
        // One token at $1 / Mtok is 1,000 nanos. 1,200 in × $2.50 =
        // 3,000,000 nanos; 300 out × $10 = 3,000,000 nanos.
        let cost = request_cost(&usage(Some(1_200), None, Some(300)), None, &gpt_4o());
        assert_eq!(cost, 6_000_000);
    }

    #[test]
    fn cached_input_is_billed_at_the_cache_price() {
        // 10,000 in of which 8,000 cached, 500 out:
        //  2,000 × $2.50 =  5,000,000 nanos
        //  8,000 × $1.25 = 10,000,000 nanos
        //    500 × $10   =  5,000,000 nanos
        let used = usage(Some(10_000), Some(8_000), Some(500));
        assert_eq!(request_cost(&used, None, &gpt_4o()), 20_000_000);
        // Without a cache price, cached tokens are ordinary input:
        // 10,000 × $2.50 = 25,000,000 nanos.
        let no_cache_price = Rates {
            cached_input: None,
            ..gpt_4o()
        };
        assert_eq!(request_cost(&used, None, &no_cache_price), 30_000_000);
    }

    #[test]
    fn cache_writes_are_billed_at_the_write_price_when_known() {
        // Anthropic: 100,000 input = 20,000 uncached + 30,000 read +
        // 50,000 written; 1,000 output.
        //  20,000 × $3    =  60,000,000 nanos
        //  30,000 × $0.30 =   9,000,000 nanos
        //  50,000 × $3.75 = 187,500,000 nanos
        //   1,000 × $15   =  15,000,000 nanos
        let used = usage(Some(100_000), Some(30_000), Some(1_000));
        assert_eq!(request_cost(&used, Some(50_000), &sonnet()), 271_500_000);
        // Without a write price, written tokens are ordinary input:
        // 70,000 × $3 = 210,000,000 nanos.
        let no_write_price = Rates {
            cache_write: None,
            ..sonnet()
        };
        let expected = 210_000_000 + 9_000_000 + 15_000_000;
        assert_eq!(request_cost(&used, Some(50_000), &no_write_price), expected);
        // An unknown write count: everything not read is uncached input.
        assert_eq!(request_cost(&used, None, &sonnet()), expected);
    }

    #[test]
    fn a_usage_carrying_cache_writes_costs_more_at_a_dearer_write_price() {
        // As the server bills: the write count read from the usage itself.
        // 10,000 input of which 4,000 written, 100 output, at Sonnet's
        // prices: 6,000 × $3 + 4,000 × $3.75 + 100 × $15.
        let plain = usage(Some(10_000), None, Some(100));
        let written = Usage {
            cache_write_tokens: Some(4_000),
            ..plain
        };
        let bill = |used: &Usage| request_cost(used, used.cache_write_tokens, &sonnet());
        assert_eq!(bill(&plain), 31_500_000);
        assert_eq!(bill(&written), 34_500_000);
        assert!(bill(&written) > bill(&plain));
    }

    #[test]
    fn reasoning_is_part_of_output_and_billed_once() {
        let mut used = usage(Some(0), None, Some(1_000));
        let without = request_cost(&used, None, &gpt_4o());
        used.reasoning_tokens = Some(800);
        assert_eq!(request_cost(&used, None, &gpt_4o()), without);
        assert_eq!(without, 10_000_000);
    }

    #[test]
    fn zero_and_missing_usage_cost_nothing() {
        assert_eq!(request_cost(&Usage::default(), None, &sonnet()), 0);
        let zeros = usage(Some(0), Some(0), Some(0));
        assert_eq!(request_cost(&zeros, Some(0), &sonnet()), 0);
        // Only output reported: input counts as zero.
        let output_only = usage(None, None, Some(1_000));
        assert_eq!(request_cost(&output_only, None, &sonnet()), 15_000_000);
        // Only input reported: output counts as zero.
        let input_only = usage(Some(1_000), None, None);
        assert_eq!(request_cost(&input_only, None, &sonnet()), 3_000_000);
        // A free model costs nothing whatever it used.
        let everything = usage(Some(u64::MAX), Some(7), Some(u64::MAX));
        assert_eq!(request_cost(&everything, Some(3), &Rates::default()), 0);
    }

    #[test]
    fn parts_beyond_the_reported_input_are_billed_as_reported() {
        // The upstream said 100 input tokens, 150 of them cached: bill the
        // 150 cached tokens (× $1.25 = 187,500 nanos), no uncached input,
        // never a negative count.
        let cost = request_cost(&usage(Some(100), Some(150), None), None, &gpt_4o());
        assert_eq!(cost, 187_500);
        let cost = request_cost(&usage(None, Some(1_000), None), None, &gpt_4o());
        assert_eq!(cost, 1_250_000);
    }

    #[test]
    fn the_cost_is_rounded_up_once_per_request() {
        // Prices below $0.001 / Mtok are fractions of a nano a token:
        // $0.0028 is 2,800 picos (2.8 nanos), $0.0007 is 700, $0.0041 is
        // 4,100.
        let cheap = Rates {
            input: usd(0.0028),
            output: usd(0.0041),
            cached_input: Some(usd(0.0007)),
            cache_write: None,
            reasoning: None,
        };
        assert_eq!(request_cost(&usage(Some(1), None, None), None, &cheap), 3);
        assert_eq!(request_cost(&usage(Some(5), None, None), None, &cheap), 14);
        assert_eq!(request_cost(&usage(Some(6), None, None), None, &cheap), 17);
        // One uncached, one cached and one output token: 2,800 + 700 +
        // 4,100 = 7,600 picos, 8 nanos once rounded (rounding each part
        // would have made 3 + 1 + 5 = 9).
        assert_eq!(
            request_cost(&usage(Some(2), Some(1), Some(1)), None, &cheap),
            8
        );
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let most = TokenPrice::from_picos_per_token(u64::MAX);
        let rates = Rates {
            input: most,
            output: most,
            cached_input: Some(most),
            cache_write: Some(most),
            reasoning: Some(most),
        };
        let used = usage(Some(u64::MAX), Some(u64::MAX / 3), Some(u64::MAX));
        assert_eq!(request_cost(&used, Some(u64::MAX / 3), &rates), Nanos::MAX);
        assert_eq!(worst_case_cost(u64::MAX, u64::MAX, &rates), Nanos::MAX);
    }

    #[test]
    fn worst_case_prices_the_whole_prompt_uncached_and_all_output() {
        // 100,000 prompt tokens × $2.50 = 250,000,000 nanos; 4,096 output
        // tokens × $10 = 40,960,000 nanos.
        assert_eq!(worst_case_cost(100_000, 4_096, &gpt_4o()), 290_960_000);
        assert_eq!(worst_case_cost(0, 0, &gpt_4o()), 0);
        // It bounds every actual cost with those counts.
        let actual = request_cost(
            &usage(Some(100_000), Some(90_000), Some(4_096)),
            None,
            &gpt_4o(),
        );
        assert!(actual <= worst_case_cost(100_000, 4_096, &gpt_4o()));
    }

    #[test]
    fn reasoning_priced_apart_is_billed_at_its_own_rate_once() {
        // Output $0.60, reasoning $3.50 per million (a model that prices
        // thinking apart): 1,000 output tokens of which 800 reasoning.
        let rates = Rates::from_usd_per_mtok(0.15, 0.60, None, None, Some(3.50)).unwrap();
        let mut used = usage(Some(0), None, Some(1_000));
        used.reasoning_tokens = Some(800);
        assert_eq!(request_cost(&used, None, &rates), 200 * 600 + 800 * 3_500);
        // Reasoning over the output reported is capped at it.
        used.reasoning_tokens = Some(5_000);
        assert_eq!(request_cost(&used, None, &rates), 1_000 * 3_500);
        // The worst case assumes every output token may be reasoning.
        assert_eq!(worst_case_cost(0, 1_000, &rates), 1_000 * 3_500);
        // Without a reasoning price, reasoning is output.
        used.reasoning_tokens = Some(800);
        assert_eq!(request_cost(&used, None, &gpt_4o()), 1_000 * 10_000);
    }

    #[test]
    fn worst_case_covers_cache_writes_dearer_than_input() {
        // Anthropic's writes cost 1.25× input: a prompt written whole to
        // the cache (10,000 × $3.75 = 37,500,000 nanos) must fit the
        // reservation.
        let reserved = worst_case_cost(10_000, 1_000, &sonnet());
        assert_eq!(reserved, 37_500_000 + 15_000_000);
        let actual = request_cost(
            &usage(Some(10_000), None, Some(1_000)),
            Some(10_000),
            &sonnet(),
        );
        assert_eq!(actual, reserved);
    }
}
