-- Client addresses sealed to their week's key (libs/events/periods.py, issue 16): the activity
-- log keeps the sealed value and asks identity for the text of a page's addresses when it is
-- read ("address expired" once the week's key is destroyed). `ip` keeps plain addresses of
-- events from before sealing.
ALTER TABLE gateway.activity ADD COLUMN ip_sealed text;
