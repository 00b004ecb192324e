--
-- PostgreSQL database dump, as `pg_dump --schema-only --no-owner` writes one (PostgreSQL 16):
-- the session header, a schema, an enum, SQL-standard function and procedure bodies
-- (BEGIN ATOMIC), a PL/pgSQL trigger function, a trigger, a rule with two actions and a table
-- with a non-ASCII name.
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: shop; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA shop;

--
-- Name: mood; Type: TYPE; Schema: shop; Owner: -
--

CREATE TYPE shop.mood AS ENUM (
    'sad',
    'ok',
    'happy'
);

--
-- Name: add_one(integer); Type: FUNCTION; Schema: shop; Owner: -
--

CREATE FUNCTION shop.add_one(i integer) RETURNS integer
    LANGUAGE sql IMMUTABLE
    BEGIN ATOMIC
 SELECT (add_one.i + 1);
END;

--
-- Name: grade(integer); Type: FUNCTION; Schema: shop; Owner: -
--

CREATE FUNCTION shop.grade(n integer) RETURNS text
    LANGUAGE sql IMMUTABLE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN (grade.n > 10) THEN 'many'::text
             ELSE 'few'::text
         END AS "case";
 SELECT 'unused; really'::text AS text;
END;

--
-- Name: touch(); Type: FUNCTION; Schema: shop; Owner: -
--

CREATE FUNCTION shop.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  NEW.updated_at := now();  -- a semicolon; inside a dollar quote
  RETURN NEW;
END;
$$;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: notes; Type: TABLE; Schema: shop; Owner: -
--

CREATE TABLE shop.notes (
    id integer NOT NULL,
    body text NOT NULL,
    mood shop.mood DEFAULT 'ok'::shop.mood NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: notes_log; Type: TABLE; Schema: shop; Owner: -
--

CREATE TABLE shop.notes_log (
    note_id integer,
    what text
);

--
-- Name: café; Type: TABLE; Schema: shop; Owner: -
--

CREATE TABLE shop.café (
    id integer NOT NULL,
    crème text DEFAULT 'brûlée'::text
);

--
-- Name: log_note(integer); Type: PROCEDURE; Schema: shop; Owner: -
--

CREATE PROCEDURE shop.log_note(IN n integer)
    LANGUAGE sql
    BEGIN ATOMIC
 INSERT INTO shop.notes_log (note_id, what)
   VALUES (log_note.n, 'procedure');
 INSERT INTO shop.notes_log (note_id, what)
   VALUES (log_note.n, 'procedure, again');
END;

--
-- Name: café café_pkey; Type: CONSTRAINT; Schema: shop; Owner: -
--

ALTER TABLE ONLY shop.café
    ADD CONSTRAINT café_pkey PRIMARY KEY (id);

--
-- Name: notes notes_pkey; Type: CONSTRAINT; Schema: shop; Owner: -
--

ALTER TABLE ONLY shop.notes
    ADD CONSTRAINT notes_pkey PRIMARY KEY (id);

--
-- Name: notes_mood_idx; Type: INDEX; Schema: shop; Owner: -
--

CREATE INDEX notes_mood_idx ON shop.notes USING btree (mood);

--
-- Name: notes notes_log_insert; Type: RULE; Schema: shop; Owner: -
--

CREATE RULE notes_log_insert AS
    ON INSERT TO shop.notes DO ( INSERT INTO shop.notes_log (note_id, what)
  VALUES (new.id, 'insert'::text);
 INSERT INTO shop.notes_log (note_id, what)
  VALUES (new.id, 'insert, again'::text);
);

--
-- Name: notes notes_touch; Type: TRIGGER; Schema: shop; Owner: -
--

CREATE TRIGGER notes_touch BEFORE UPDATE ON shop.notes FOR EACH ROW EXECUTE FUNCTION shop.touch();

--
-- Name: TABLE notes; Type: COMMENT; Schema: shop; Owner: -
--

COMMENT ON TABLE shop.notes IS 'what a note says; and how it felt';

--
-- PostgreSQL database dump complete
--

