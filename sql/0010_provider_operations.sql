-- Capture, cancel and refund through the API are carried out by the
-- sandbox alone so far: for a payment at a network provider they would
-- move PayFlow's books without moving the provider's money.  Until those
-- calls exist, the statements refuse such payments by name (PF008),
-- instead of matching nothing.

CREATE FUNCTION payflow_operable(p_provider text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    IF p_provider <> 'sandbox' THEN
        RAISE EXCEPTION 'capture, cancel and refund are not available yet '
            'for payments at provider %', p_provider USING ERRCODE = 'PF008';
    END IF;

    RETURN true;
END
$$;

GRANT EXECUTE ON FUNCTION payflow_operable(text) TO :"app";
