-- Idempotency keys are remembered SKYJOBS_IDEMPOTENCY_TTL (24 h) after their first use, as Stripe's
-- are: a later use binds the key anew, and each API process deletes the expired rows now and then.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
