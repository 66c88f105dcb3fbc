-- Apps that send mail (their `sendmail` addon): the sender they must use, the network their
-- password is taken from, the SHA-256 of the password. A removed app keeps its row, marked.
CREATE TABLE mail.apps (
    app_id      text PRIMARY KEY,
    sender      text NOT NULL,
    network     cidr NOT NULL,
    hash        text,
    removed     boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL
);
