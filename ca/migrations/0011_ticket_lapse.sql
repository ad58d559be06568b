-- A console ticket that expires unused is audited once (`console_ticket_lapsed`), by
-- whichever replica's heartbeat sees it first; this marks it done.
ALTER TABLE console_tickets ADD COLUMN lapse_audited BIGINT NOT NULL DEFAULT 0;
