//! The preset zlib dictionary of SPDY/3 header blocks (SPDY protocol draft 3, section
//! 2.6.10.1): 65 words, each after its length as a 32-bit big-endian integer, then a
//! run of status lines, dates and media types. It is data of the protocol: every peer
//! must use exactly these 1423 bytes (Adler-32 `0xe3c6a7c2`).

/// The words that are preceded by their length.
const WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The rest, as it stands (no length prefixes).
const TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
    "502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,",
    "application/xhtml+xml,text/plain,text/javascript,public",
    "private",
    "max-age=",
    "gzip,deflate,sdch",
    "charset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

pub const LEN: usize = 1423;

/// The dictionary, built once at compile time.
pub static DICTIONARY: [u8; LEN] = build();

const fn build() -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let mut at = 0;
    let mut w = 0;
    while w < WORDS.len() {
        let word = WORDS[w].as_bytes();
        let len = (word.len() as u32).to_be_bytes();
        let mut i = 0;
        while i < 4 {
            out[at] = len[i];
            at += 1;
            i += 1;
        }
        let mut i = 0;
        while i < word.len() {
            out[at] = word[i];
            at += 1;
            i += 1;
        }
        w += 1;
    }
    let tail = TAIL.as_bytes();
    let mut i = 0;
    while i < tail.len() {
        out[at] = tail[i];
        at += 1;
        i += 1;
    }
    // A wrong word list fails the build here rather than garbling headers at run time.
    assert!(at == LEN, "SPDY dictionary length");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in data {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn dictionary_is_the_published_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(adler32(&DICTIONARY), 0xe3c6_a7c2);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }
}
