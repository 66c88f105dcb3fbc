-- The outbound relay (smart host): its settings, the password sealed; NULL: none.
ALTER TABLE mail.settings ADD COLUMN relay jsonb;
