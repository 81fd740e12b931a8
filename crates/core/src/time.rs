//! UTC calendar arithmetic for timestamps kept as milliseconds since the
//! Unix epoch: RFC 3339 text out (the request log, usage buckets) and in
//! (the admin API's `from` and `to`). The proleptic Gregorian calendar in
//! UTC needs no time-zone database, so this is a few lines of integer
//! arithmetic rather than a dependency.

const MS_PER_DAY: i64 = 86_400_000;

/// Days from 1970-01-01 to the given civil date (negative before it).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    // Count in 400-year eras starting on March 1st, so that the leap day
    // is the last day of a year and every month before it has a fixed
    // length.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day) of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// An HTTP date (RFC 9110's IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`)
/// for whole seconds since the epoch: what a `Date` header holds.
pub fn format_http_date(seconds: i64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // 1970-01-01 was a Thursday.
    out[..3].copy_from_slice(DAYS[days.rem_euclid(7) as usize]);
    let two = |out: &mut [u8], value: i64| {
        out[0] = b'0' + (value / 10) as u8;
        out[1] = b'0' + (value % 10) as u8;
    };
    two(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let year = year.clamp(0, 9999);
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    two(&mut out[17..19], second_of_day / 3600);
    two(&mut out[20..22], second_of_day / 60 % 60);
    two(&mut out[23..25], second_of_day % 60);
    out
}

/// `2023-11-14T22:13:20.000Z`: RFC 3339 in UTC, with milliseconds.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    )
}

/// `2023-11-14T22:00:00Z`: RFC 3339 in UTC, to the second.
pub fn format_rfc3339(ms: i64) -> String {
    let mut text = format_rfc3339_ms(ms);
    text.replace_range(19..23, "");
    text
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` (RFC 3339; `t`,
/// `z` and a space for `T` are accepted) or a bare `YYYY-MM-DD` (midnight
/// UTC), as milliseconds since the epoch. A fraction finer than a
/// millisecond is truncated; a leap second reads as the second before it.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = bytes.get(range)?;
        if slice.is_empty() || !slice.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(slice).ok()?.parse().ok()
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let date_ms = days_from_civil(year, month, day) * MS_PER_DAY;
    if bytes.len() == 10 {
        return Some(date_ms);
    }
    if !matches!(bytes[10], b'T' | b't' | b' ') || bytes.get(13) != Some(&b':') {
        return None;
    }
    if bytes.get(16) != Some(&b':') {
        return None;
    }
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut millis = 0;
    if bytes.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
        for (place, digit) in bytes[start..at].iter().take(3).enumerate() {
            millis += i64::from(digit - b'0') * [100, 10, 1][place];
        }
    }
    let offset_minutes = match bytes.get(at)? {
        b'Z' | b'z' if at + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == bytes.len() && bytes[at + 3] == b':' => {
            let (hours, minutes) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 60 + minutes;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let seconds = hour * 3600 + minute * 60 + second.min(59);
    Some(date_ms + seconds * 1000 + millis - offset_minutes * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdates() {
        let text = |seconds| String::from_utf8(format_http_date(seconds).to_vec()).unwrap();
        // RFC 9110's own example.
        assert_eq!(text(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(text(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(text(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(text(1_795_996_799), "Sun, 29 Nov 2026 23:59:59 GMT");
    }

    #[test]
    fn known_instants_format_and_parse_back() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_000, "2023-11-14T22:13:20.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (253_402_300_799_000, "9999-12-31T23:59:59.000Z"),
        ] {
            assert_eq!(format_rfc3339_ms(ms), text);
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
        assert_eq!(format_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let start = days_from_civil(1900, 1, 1);
        let mut expected = (1900, 1, 1);
        for days in start..start + 146_097 {
            assert_eq!(civil_from_days(days), expected);
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), days);
            let (year, month, day) = expected;
            expected = if day < days_in_month(year, month) {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
        }
    }

    #[test]
    fn offsets_fractions_and_dates_are_read() {
        let base = 1_700_000_000_000;
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(base));
        assert_eq!(parse_rfc3339("2023-11-14t22:13:20z"), Some(base));
        assert_eq!(parse_rfc3339("2023-11-14 22:13:20Z"), Some(base));
        assert_eq!(parse_rfc3339("2023-11-15T00:13:20+02:00"), Some(base));
        assert_eq!(parse_rfc3339("2023-11-14T20:43:20-01:30"), Some(base));
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.1239999Z"),
            Some(base + 123)
        );
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20.5Z"), Some(base + 500));
        assert_eq!(
            parse_rfc3339("2023-11-14"),
            Some(base - (22 * 3600 + 13 * 60 + 20) * 1000)
        );
    }

    #[test]
    fn malformed_times_are_refused() {
        for text in [
            "",
            "2023",
            "2023-13-01",
            "2023-02-29",
            "2023-11-31T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:20",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13Z",
            "2023-11-14T22:13:20+0200",
            "2023-11-14T22:13:20Zjunk",
            "2023-11-14x",
            "１９７０-01-01",
            "+123-01-01",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }
}
