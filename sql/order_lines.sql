-- order_lines: the items of every attributed order.
-- Grain: one order line. Columns: customer_id, order_id, ordered_at, channel, sku, quantity.
-- Times are UTC: the lake's instants, read in p13n's UTC sessions (DuckDB and Spark alike).
SELECT o.customer_id, o.order_id, o.ordered_at, o.channel, l.sku, CAST(l.quantity AS BIGINT) AS quantity
FROM {{ orders }} o
JOIN {{ silver.shopify_order_lines }} l ON o.order_id = 'shopify:' || l.order_id
UNION ALL
SELECT o.customer_id, o.order_id, o.ordered_at, o.channel, l.sku, CAST(l.quantity AS BIGINT) AS quantity
FROM {{ orders }} o
JOIN {{ silver.square_line_items }} l ON o.order_id = 'square:' || l.transaction_id
UNION ALL
SELECT o.customer_id, o.order_id, o.ordered_at, o.channel, p.sku, CAST(p.quantity AS BIGINT) AS quantity
FROM {{ orders }} o
JOIN {{ silver.legacy_pos_sales }} p ON o.order_id = 'legacy:' || p.receipt_no
