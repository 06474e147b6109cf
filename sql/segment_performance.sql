-- segment_performance: each persona and lifecycle stage on each scoring date, with its value and how
-- many customers moved into it since the previous scoring date.
-- Grain: as_of_date x persona x lifecycle_stage.
WITH s AS (
    SELECT s.*, lag(s.lifecycle_stage) OVER (PARTITION BY s.customer_id ORDER BY s.as_of_date) AS previous_stage
    FROM {{ gold.segments }} s
)
SELECT s.as_of_date,
       coalesce(s.persona, '(no purchases)') AS persona,
       s.lifecycle_stage,
       count(*) AS customers,
       round(count(*) / sum(count(*)) OVER (PARTITION BY s.as_of_date), 4) AS share_of_customers,
       round(avg(s.clv_12m), 2) AS avg_clv_12m,
       round(sum(f.revenue_365d), 2) AS revenue_365d,
       round(avg(c.churn_probability), 4) AS avg_churn_probability,
       sum(CASE WHEN s.previous_stage IS NOT NULL AND s.previous_stage <> s.lifecycle_stage THEN 1 ELSE 0 END)
           AS moved_in
FROM s
LEFT JOIN {{ gold.customer_features }} f ON f.customer_id = s.customer_id AND f.as_of_date = s.as_of_date
LEFT JOIN {{ gold.churn_scores }} c ON c.customer_id = s.customer_id AND c.as_of_date = s.as_of_date
GROUP BY s.as_of_date, coalesce(s.persona, '(no purchases)'), s.lifecycle_stage
ORDER BY s.as_of_date, customers DESC
