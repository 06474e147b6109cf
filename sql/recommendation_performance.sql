-- recommendation_performance: how each list did: the customers it reached and the share of them who
-- bought one of their recommended items within 30 days after the recommendation date.
-- Grain: as_of_date x list_type x source. Recent dates have an incomplete 30-day window
-- (`window_complete` says which): compare those only with each other.
WITH recs AS (
    SELECT as_of_date, list_type, source, customer_id, sku FROM {{ gold.recommendations }}
),
bought AS (
    SELECT DISTINCT r.as_of_date, r.list_type, r.source, r.customer_id
    FROM recs r
    JOIN {{ order_lines }} l ON l.customer_id = r.customer_id AND l.sku = r.sku
     AND l.ordered_at >= CAST(r.as_of_date AS TIMESTAMP) + INTERVAL 1 DAY
     AND l.ordered_at < CAST(r.as_of_date AS TIMESTAMP) + INTERVAL 31 DAY
),
last_order AS (SELECT max(ordered_at) AS at FROM {{ orders }})
SELECT r.as_of_date, r.list_type, r.source,
       count(DISTINCT r.customer_id) AS customers,
       count(*) AS recommendations,
       count(DISTINCT r.sku) AS distinct_items,
       count(DISTINCT b.customer_id) AS customers_who_bought,
       round(count(DISTINCT b.customer_id) / count(DISTINCT r.customer_id), 4) AS hit_rate_30d,
       max(CASE WHEN last_order.at >= CAST(r.as_of_date AS TIMESTAMP) + INTERVAL 31 DAY THEN 1 ELSE 0 END) = 1
           AS window_complete
FROM recs r
CROSS JOIN last_order
LEFT JOIN bought b ON b.as_of_date = r.as_of_date AND b.list_type = r.list_type AND b.source = r.source
                  AND b.customer_id = r.customer_id
GROUP BY r.as_of_date, r.list_type, r.source
ORDER BY r.as_of_date, r.list_type, customers DESC
