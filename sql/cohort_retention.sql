-- cohort_retention: customers grouped by the month of their first order; for each month after it,
-- the share of the cohort who ordered again that month.
-- Grain: cohort_month x months_since_first (0 = the first month: retention 1.0 by definition).
WITH o AS (SELECT customer_id, ordered_at FROM {{ orders }}),
firsts AS (SELECT customer_id, min(ordered_at) AS first_at FROM o GROUP BY customer_id),
activity AS (
    SELECT DISTINCT f.customer_id,
           date_trunc('month', f.first_at) AS cohort_month,
           (year(o.ordered_at) - year(f.first_at)) * 12 + month(o.ordered_at) - month(f.first_at) AS months_since_first
    FROM o JOIN firsts f ON f.customer_id = o.customer_id
),
sizes AS (SELECT cohort_month, count(*) AS cohort_customers FROM activity WHERE months_since_first = 0 GROUP BY cohort_month)
SELECT a.cohort_month, a.months_since_first, s.cohort_customers,
       count(*) AS active_customers,
       round(count(*) / s.cohort_customers, 4) AS retention
FROM activity a JOIN sizes s ON s.cohort_month = a.cohort_month
GROUP BY a.cohort_month, a.months_since_first, s.cohort_customers
ORDER BY a.cohort_month, a.months_since_first
