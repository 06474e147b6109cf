-- cohort_retention: customers grouped by the month of their first order; for each month after it,
-- the share of the cohort who ordered again that month.
-- Grain: cohort_month x months_since_first (0 = the first month: retention 1.0 by definition).
-- `partial_period`: the lake's first month (its cohort also holds customers whose real first order
-- came before the data starts) or its last month (not over yet): compare those cells with care.
WITH o AS (SELECT customer_id, ordered_at FROM {{ orders }}),
firsts AS (SELECT customer_id, min(ordered_at) AS first_at FROM o GROUP BY customer_id),
activity AS (
    SELECT DISTINCT f.customer_id,
           date_trunc('month', f.first_at) AS cohort_month,
           (year(o.ordered_at) - year(f.first_at)) * 12 + month(o.ordered_at) - month(f.first_at) AS months_since_first,
           date_trunc('month', o.ordered_at) AS activity_month
    FROM o JOIN firsts f ON f.customer_id = o.customer_id
),
bounds AS (SELECT date_trunc('month', min(ordered_at)) AS first_month, date_trunc('month', max(ordered_at)) AS last_month FROM o),
sizes AS (SELECT cohort_month, count(*) AS cohort_customers FROM activity WHERE months_since_first = 0 GROUP BY cohort_month)
SELECT a.cohort_month, a.months_since_first, s.cohort_customers,
       count(*) AS active_customers,
       round(count(*) / s.cohort_customers, 4) AS retention,
       max(CASE WHEN a.cohort_month = b.first_month OR a.activity_month = b.last_month THEN 1 ELSE 0 END) = 1
           AS partial_period
FROM activity a JOIN sizes s ON s.cohort_month = a.cohort_month CROSS JOIN bounds b
GROUP BY a.cohort_month, a.months_since_first, s.cohort_customers
ORDER BY a.cohort_month, a.months_since_first
