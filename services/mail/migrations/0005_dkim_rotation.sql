-- DKIM keys of a domain beside the signing one (mail.domains.selector): the next key of a
-- rotation (published, signs once the nameservers serve its record; one at a time) and keys it
-- replaced (their records stay published a while for mail in flight, then are removed).
-- `since`: when the next key was added, or when a retiring key stopped signing. A retiring
-- key keeps only its public half.
CREATE TABLE mail.dkim_keys (
    domain       text NOT NULL,
    selector     text NOT NULL,
    state        text NOT NULL CHECK (state IN ('next', 'retiring')),
    dkim_key     text CHECK ((state = 'next') = (dkim_key IS NOT NULL)),
    dkim_public  text NOT NULL,
    since        timestamptz NOT NULL,
    PRIMARY KEY (domain, selector)
);
CREATE UNIQUE INDEX dkim_keys_one_next ON mail.dkim_keys (domain) WHERE state = 'next';
