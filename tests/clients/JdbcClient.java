// PostgreSQL's JDBC driver (Debian's libpostgresql-jdbc-java) against `tessera serve`,
// run by tests/clients.rs as `java -cp postgresql.jar JdbcClient.java PORT`. Checks
// statements, prepared statements with parameters, executeBatch's counts, float8[] from
// rows(m), metadata and an error's SQLSTATE; prints "ok" when every check holds.
import java.sql.*;
import java.util.Arrays;

public class JdbcClient {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/tessera";
        try (Connection conn = DriverManager.getConnection(url, "tessera", "")) {
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE MATRIX m (2, 3) BLOCK (1, 2)");
                int n = st.executeUpdate("INSERT INTO m VALUES (0, 0, 1.5), (0, 2, -2), (1, 1, 4)");
                check(n == 3, "insert count " + n);
                st.execute("CREATE TABLE t (id INT, name TEXT, x DOUBLE)");
            }
            // Prepared statements: the driver switches to a named server-side statement
            // after five executions, so run it more often than that.
            try (PreparedStatement ins = conn.prepareStatement("INSERT INTO t VALUES (?, ?, ?)")) {
                for (int k = 0; k < 8; k++) {
                    ins.setInt(1, k);
                    ins.setString(2, "n" + k);
                    ins.setDouble(3, k * 0.5);
                    check(ins.executeUpdate() == 1, "insert " + k);
                }
            }
            // executeBatch counts each INSERT's row (the driver reads the counts only
            // when Describe of the INSERT answers NoData, not an empty RowDescription).
            try (PreparedStatement ins = conn.prepareStatement("INSERT INTO t VALUES (?, ?, ?)")) {
                for (int k = 8; k < 11; k++) {
                    ins.setInt(1, k);
                    ins.setString(2, "n" + k);
                    ins.setDouble(3, k * 0.5);
                    ins.addBatch();
                }
                int[] counts = ins.executeBatch();
                check(Arrays.equals(counts, new int[] {1, 1, 1}), "batch counts " + Arrays.toString(counts));
            }
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT count(*), sum(x) FROM t WHERE id >= 8")) {
                check(rs.next() && rs.getLong(1) == 3 && rs.getDouble(2) == 13.5, "batch rows");
            }
            try (PreparedStatement q = conn.prepareStatement(
                    "SELECT name, x FROM t WHERE id >= ? AND x < ? ORDER BY id")) {
                for (int k = 0; k < 7; k++) {
                    q.setInt(1, k);
                    q.setDouble(2, 3.0);
                    int rows = 0;
                    try (ResultSet rs = q.executeQuery()) {
                        while (rs.next()) {
                            int id = k + rows;
                            check(rs.getString(1).equals("n" + id), "name " + rs.getString(1));
                            check(rs.getDouble(2) == id * 0.5, "x " + rs.getDouble(2));
                            rows++;
                        }
                    }
                    check(rows == Math.max(0, 6 - k), "rows for k=" + k + ": " + rows);
                }
            }
            // rows(m): one float8[] per row, worked by hand.
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT i, row FROM rows(m) ORDER BY i")) {
                double[][] want = {{1.5, 0, -2}, {0, 4, 0}};
                int i = 0;
                while (rs.next()) {
                    check(rs.getLong(1) == i, "row index");
                    Double[] row = (Double[]) rs.getArray(2).getArray();
                    double[] got = Arrays.stream(row).mapToDouble(Double::doubleValue).toArray();
                    check(Arrays.equals(got, want[i]), "row " + i + ": " + Arrays.toString(got));
                    i++;
                }
                check(i == 2, "rows(m) returned " + i + " rows");
            }
            // A matmul, summed: m @ t(m) = [[6.25, 0], [0, 16]].
            try (Statement st = conn.createStatement();
                 ResultSet rs = st.executeQuery("SELECT sum(v), count(*) FROM matmul(m, t(m))")) {
                check(rs.next() && rs.getDouble(1) == 22.25 && rs.getLong(2) == 2, "matmul");
            }
            // Metadata: the driver's own pg_catalog queries.
            DatabaseMetaData meta = conn.getMetaData();
            check(meta.getDatabaseProductName().equals("PostgreSQL"), meta.getDatabaseProductName());
            boolean sawM = false, sawT = false;
            try (ResultSet rs = meta.getTables(null, "public", "%", null)) {
                while (rs.next()) {
                    sawM |= rs.getString("TABLE_NAME").equals("m");
                    sawT |= rs.getString("TABLE_NAME").equals("t");
                }
            }
            check(sawM && sawT, "getTables lists m and t");
            // getColumns, as DBeaver's table editor asks: names, SQL types and type
            // names in column order.
            StringBuilder cols = new StringBuilder();
            try (ResultSet rs = meta.getColumns(null, "public", "t", "%")) {
                while (rs.next()) {
                    cols.append(rs.getInt("ORDINAL_POSITION")).append(':')
                        .append(rs.getString("COLUMN_NAME")).append(':')
                        .append(rs.getInt("DATA_TYPE")).append(':')
                        .append(rs.getString("TYPE_NAME")).append(' ');
                }
            }
            check(cols.toString().equals("1:id:4:int4 2:name:12:text 3:x:8:float8 "),
                  "getColumns(t): " + cols);
            // A matrix's cells: i and j as bigint, v as double.
            StringBuilder mcols = new StringBuilder();
            try (ResultSet rs = meta.getColumns(null, "public", "m", "%")) {
                while (rs.next()) {
                    mcols.append(rs.getString("COLUMN_NAME")).append(':')
                        .append(rs.getInt("DATA_TYPE")).append(' ');
                }
            }
            check(mcols.toString().equals("i:-5 j:-5 v:8 "), "getColumns(m): " + mcols);
            // getPrimaryKeys (information_schema._pg_expandarray) and getSchemas.
            try (ResultSet rs = meta.getPrimaryKeys(null, "public", "t")) {
                check(!rs.next(), "t has no primary key");
            }
            boolean sawPublic = false;
            try (ResultSet rs = meta.getSchemas()) {
                while (rs.next()) {
                    sawPublic |= rs.getString("TABLE_SCHEM").equals("public");
                }
            }
            check(sawPublic, "getSchemas lists public");
            // Errors carry their SQLSTATE; the connection goes on.
            try (Statement st = conn.createStatement()) {
                st.executeQuery("SELECT * FROM nosuch");
                check(false, "no error for an unknown table");
            } catch (SQLException e) {
                check("42P01".equals(e.getSQLState()), "SQLSTATE " + e.getSQLState());
            }
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 40 + 2")) {
                check(rs.next() && rs.getInt(1) == 42, "after the error");
            }
        }
        System.out.println("ok");
    }
}
