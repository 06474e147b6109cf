-- campaign_performance: each audience and trigger program, per destination: customers sent and held
-- out (silver.sends: first entries), and what both groups bought in the 14 days after entering
-- (measurement.window_days' default; orders of every sales system through the identity graph), so
-- the incremental revenue of the program is its sent customers' revenue per head minus the holdout's,
-- times the customers sent. `window_complete`: every entrant's 14 days are in the lake yet (recent
-- entries are partial: compare them only with each other). `cost`: what the sends cost
-- (activation.audiences.<name>.cost_per_send); `roi`: incremental revenue per unit of cost.
-- Grain: program_type x program x destination x channel.
-- Times are UTC: the lake's instants, read in p13n's UTC sessions (DuckDB and Spark alike).
WITH entries AS (
    SELECT program_type, program, destination, channel, customer_id, status, cost,
           CAST(sent_at AS TIMESTAMP) AS entered_at
    FROM {{ silver.sends }}
),
o AS (SELECT customer_id, ordered_at, revenue_usd FROM {{ orders }}),
outcomes AS (
    SELECT e.program_type, e.program, e.destination, e.channel, e.status, e.customer_id, e.entered_at,
           e.cost,
           count(o.ordered_at) AS orders,
           coalesce(sum(o.revenue_usd), 0) AS revenue
    FROM entries e
    LEFT JOIN o ON o.customer_id = e.customer_id AND o.ordered_at >= e.entered_at
              AND o.ordered_at < e.entered_at + INTERVAL 14 DAY
    GROUP BY e.program_type, e.program, e.destination, e.channel, e.status, e.customer_id, e.entered_at, e.cost
),
per_group AS (
    SELECT program_type, program, destination, channel,
           count(CASE WHEN status = 'sent' THEN 1 END) AS sent,
           count(CASE WHEN status = 'held_out' THEN 1 END) AS held_out,
           count(CASE WHEN status = 'sent' AND orders > 0 THEN 1 END) AS sent_converted,
           count(CASE WHEN status = 'held_out' AND orders > 0 THEN 1 END) AS held_out_converted,
           sum(CASE WHEN status = 'sent' THEN revenue ELSE 0 END) AS sent_revenue,
           sum(CASE WHEN status = 'held_out' THEN revenue ELSE 0 END) AS held_out_revenue,
           sum(coalesce(cost, 0)) AS cost,
           min(entered_at) AS first_entry,
           max(entered_at) AS last_entry
    FROM outcomes
    GROUP BY program_type, program, destination, channel
),
last_order AS (SELECT max(ordered_at) AS at FROM o)
SELECT g.program_type, g.program, g.destination, g.channel,
       g.sent, g.held_out,
       round(g.sent_converted / nullif(g.sent, 0), 4) AS sent_conversion,
       round(g.held_out_converted / nullif(g.held_out, 0), 4) AS held_out_conversion,
       round(g.sent_revenue, 2) AS sent_revenue,
       round(g.sent_revenue / nullif(g.sent, 0), 2) AS sent_revenue_per_customer,
       round(g.held_out_revenue / nullif(g.held_out, 0), 2) AS held_out_revenue_per_customer,
       round((g.sent_revenue / nullif(g.sent, 0) - g.held_out_revenue / nullif(g.held_out, 0)) * g.sent, 2)
           AS incremental_revenue,
       round(g.cost, 2) AS cost,
       round((g.sent_revenue / nullif(g.sent, 0) - g.held_out_revenue / nullif(g.held_out, 0)) * g.sent
             / nullif(g.cost, 0), 2) AS roi,
       g.first_entry, g.last_entry,
       l.at >= g.last_entry + INTERVAL 14 DAY AS window_complete
FROM per_group g CROSS JOIN last_order l
ORDER BY g.program_type, g.program, g.destination
