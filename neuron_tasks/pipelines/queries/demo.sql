-- The pipelines phase of `neuron-tasks demo`: a small source table it creates, changes and drops.

-- name: pipeline_demo_drop_table
-- Remove the demo's source table.
DROP TABLE IF EXISTS public.demo_pipeline_docs

-- name: pipeline_demo_create_table
-- The demo's source table.
CREATE TABLE public.demo_pipeline_docs (id int PRIMARY KEY, body text)

-- name: pipeline_demo_fill
-- The demo's corpus, ids from 1.
INSERT INTO public.demo_pipeline_docs SELECT i, t FROM unnest(%(texts)s::text[]) WITH ORDINALITY AS u(t, i)

-- name: pipeline_demo_change
-- Change one row of the demo's source.
UPDATE public.demo_pipeline_docs SET body = 'Refunds go back to the original card.' WHERE id = 1

-- name: pipeline_demo_delete
-- Delete one row of the demo's source.
DELETE FROM public.demo_pipeline_docs WHERE id = 6
