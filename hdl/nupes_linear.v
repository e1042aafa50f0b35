// Reference RTL: one power-quantized Linear layer, bit-exact to nupes-sim (docs/ARITHMETIC.md).
//
// Sequential and synthesizable: one product per clock, k ascending (§4), for output channels
// o = 0..O-1, then threshold requantization (§6 (i)) one comparison per clock. The ROMs are
// loaded with $readmemh from the golden hex export (docs/GOLDEN.md "Hex export"); the
// parameters are the ones of the layer's generated header (layers__NNN_<name>__params.vh).
//
//   operand datapath (PRODUCT = 0): p = w_lut[t(o,k)][q_w - W_LUT_QMIN] * x_lut[q_x - X_LUT_QMIN]
//                                   (W_SIGNED = 0: unsigned weight codes, e.g. codebook indices)
//   product datapath (PRODUCT = 1): p = sign(q_w) sign(q_x) p_lut[t(o,k)][idx],
//                                   idx = |q_w||q_x| (P_BY_PRODUCT) or |q_w|(P_MX+1) + |q_x|
//   accumulator: ACC_W bits, bias first; SATURATE = 0: wrap (mod 2^ACC_W);
//                SATURATE = 1: clamp after every addition; TILE = T > 0: each tile of T
//                consecutive k is summed into a zeroed saturating partial, then the
//                partial is added to the accumulator with a clamp.
//   requant: code = OUT_QMIN + #{j : acc >= thr[row][j]}, row = o if THR_ROWS > 1 else 0;
//            thresholds are THR_W-bit words (ACC_W + 1 when the "never reached" value
//            2^(ACC_W-1) is present).
//
// Interface: write the K input codes through x_we/x_addr/x_data, pulse start; for each o the
// module raises out_valid for one clock with out_index = o, out_acc and out_code; done rises
// after the last one (and stays until the next start).
//
// Planted bugs for the acceptance test (tests/hdl): define one of
//   BUG_CLAMP_AT_END  saturate only the final sum        (caught at stage acc)
//   BUG_LUT_ROW       always weight LUT row 0              (caught at stage acc)
//   BUG_GT            acc > thr instead of acc >= thr      (caught at stage out)
//   BUG_THR_TRUNC     thresholds read as ACC_W-bit words   (caught at stage out)
`timescale 1ns/1ps
module nupes_linear #(
    parameter integer K = 16,
    parameter integer O = 5,
    parameter integer X_BITS = 4,
    parameter integer X_SIGNED = 0,
    parameter integer X_LUT_QMIN = 0,
    parameter integer W_BITS = 4,
    parameter integer W_SIGNED = 1,
    parameter integer W_LUT_QMIN = -7,
    parameter integer PRODUCT = 0,
    parameter integer W_LUT_ROWS = 1,
    parameter integer W_LUT_COLS = 16,
    parameter integer W_LUT_W = 16,
    parameter integer X_LUT_COLS = 16,
    parameter integer X_LUT_W = 16,
    parameter integer P_LUT_ROWS = 1,
    parameter integer P_LUT_COLS = 1,
    parameter integer P_LUT_W = 16,
    parameter integer P_BY_PRODUCT = 1,
    parameter integer P_MX = 0,
    parameter integer WIDX_W = 8,
    parameter integer ACC_W = 24,
    parameter integer SATURATE = 1,
    parameter integer TILE = 0,
    parameter integer N_THR = 15,
    parameter integer THR_ROWS = 1,
    parameter integer THR_W = 25,
    parameter integer OUT_QMIN = 0,
    parameter integer OUT_BITS = 4,
    parameter W_CODES_FILE = "weight_codes.hex",
    parameter W_INDEX_FILE = "weight_table_index.hex",
    parameter W_LUT_FILE = "w_lut.hex",
    parameter X_LUT_FILE = "x_lut.hex",
    parameter P_LUT_FILE = "p_lut.hex",
    parameter BIAS_FILE = "bias.hex",
    parameter THR_FILE = "thresholds.hex"
) (
    input  wire                clk,
    input  wire                rst,
    input  wire                x_we,
    input  wire [15:0]         x_addr,
    input  wire [X_BITS-1:0]   x_data,
    input  wire                start,
    output reg                 busy,
    output reg                 out_valid,
    output reg  [15:0]         out_index,
    output reg  [ACC_W-1:0]    out_acc,
    output reg  [OUT_BITS-1:0] out_code,
    output reg                 done
);
    localparam integer SW = 72;  // internal signed width: products < 2^62, sums of two < 2^65
    localparam signed [SW-1:0] HI = (72'sd1 <<< (ACC_W - 1)) - 72'sd1;
    localparam signed [SW-1:0] LO = -(72'sd1 <<< (ACC_W - 1));

    reg [W_BITS-1:0]  w_codes [0:O*K-1];
    reg [WIDX_W-1:0]  w_index [0:O*K-1];
    reg [W_LUT_W-1:0] w_lut   [0:W_LUT_ROWS*W_LUT_COLS-1];
    reg [X_LUT_W-1:0] x_lut   [0:X_LUT_COLS-1];
    reg [P_LUT_W-1:0] p_lut   [0:P_LUT_ROWS*P_LUT_COLS-1];
    reg [ACC_W-1:0]   bias    [0:O-1];
    reg [THR_W-1:0]   thr     [0:THR_ROWS*N_THR-1];
    reg [X_BITS-1:0]  x_mem   [0:K-1];

    initial begin
        $readmemh(W_CODES_FILE, w_codes);
        $readmemh(W_INDEX_FILE, w_index);
        $readmemh(BIAS_FILE, bias);
        $readmemh(THR_FILE, thr);
        if (PRODUCT) $readmemh(P_LUT_FILE, p_lut);
        else begin
            $readmemh(W_LUT_FILE, w_lut);
            $readmemh(X_LUT_FILE, x_lut);
        end
    end

    always @(posedge clk) if (x_we) x_mem[x_addr] <= x_data;

    function signed [SW-1:0] clamp(input signed [SW-1:0] v);
        clamp = (v > HI) ? HI : ((v < LO) ? LO : v);
    endfunction

    // sign-extend raw words to SW bits
    function signed [SW-1:0] sx_w(input [W_BITS-1:0] q);
        sx_w = W_SIGNED ? $signed({{(SW-W_BITS){q[W_BITS-1]}}, q}) : $signed({{(SW-W_BITS){1'b0}}, q});
    endfunction
    function signed [SW-1:0] sx_x(input [X_BITS-1:0] q);
        sx_x = X_SIGNED ? $signed({{(SW-X_BITS){q[X_BITS-1]}}, q}) : $signed({{(SW-X_BITS){1'b0}}, q});
    endfunction

    reg [15:0] o, k, j;
    reg [2:0] state;
    localparam S_IDLE = 3'd0, S_MAC = 3'd1, S_TILE = 3'd2, S_REQ = 3'd3, S_EMIT = 3'd4;
    reg signed [SW-1:0] acc, part;
    reg [OUT_BITS-1:0] count;

    // the product p(o, k) of the current step (combinational)
    wire [31:0] flat = o * K + k;
    wire signed [SW-1:0] qw = sx_w(w_codes[flat]);
    wire signed [SW-1:0] qx = sx_x(x_mem[k]);
`ifdef BUG_LUT_ROW
    wire [31:0] row = 0;
`else
    wire [31:0] row = w_index[flat];
`endif
    wire [W_LUT_W-1:0] w_raw = w_lut[row * W_LUT_COLS + (qw - W_LUT_QMIN)];
    wire [X_LUT_W-1:0] x_raw = x_lut[qx - X_LUT_QMIN];
    wire signed [SW-1:0] wv = $signed({{(SW-W_LUT_W){w_raw[W_LUT_W-1]}}, w_raw});
    wire signed [SW-1:0] xv = $signed({{(SW-X_LUT_W){x_raw[X_LUT_W-1]}}, x_raw});
    wire signed [SW-1:0] mw = qw < 0 ? -qw : qw;
    wire signed [SW-1:0] mx = qx < 0 ? -qx : qx;
    wire [31:0] pidx = P_BY_PRODUCT ? mw * mx : mw * (P_MX + 1) + mx;
    wire [P_LUT_W-1:0] p_raw = p_lut[row * P_LUT_COLS + pidx];
    wire signed [SW-1:0] pmag = $signed({{(SW-P_LUT_W){p_raw[P_LUT_W-1]}}, p_raw});
    wire neg = (qw < 0) ^ (qx < 0);
    wire signed [SW-1:0] prod = PRODUCT ? ((qw == 0 || qx == 0) ? 0 : (neg ? -pmag : pmag)) : wv * xv;

    // threshold j of the current output's row
    wire [THR_W-1:0] t_raw = thr[(THR_ROWS > 1 ? o : 0) * N_THR + j];
    wire signed [SW-1:0] t_full = $signed({{(SW-THR_W){t_raw[THR_W-1]}}, t_raw});
`ifdef BUG_THR_TRUNC
    wire signed [SW-1:0] t_val = (t_full <<< (SW - ACC_W)) >>> (SW - ACC_W);  // keeps only ACC_W bits
`else
    wire signed [SW-1:0] t_val = t_full;
`endif
    // the accumulator as the requantizer sees it: ACC_W bits (wrapped or clamped)
    wire signed [SW-1:0] acc_n = $signed({{(SW-ACC_W){acc[ACC_W-1]}}, acc[ACC_W-1:0]});
`ifdef BUG_GT
    wire hit = acc_n > t_val;
`else
    wire hit = acc_n >= t_val;
`endif
    wire last_k = (k == K - 1);
    wire tile_end = (TILE > 0) && (last_k || ((k + 1) % (TILE > 0 ? TILE : 1) == 0));
    wire signed [SW-1:0] bias_o = $signed({{(SW-ACC_W){bias[o][ACC_W-1]}}, bias[o]});

    always @(posedge clk) begin
        out_valid <= 1'b0;
        if (rst) begin
            state <= S_IDLE;
            busy <= 1'b0;
            done <= 1'b0;
        end else case (state)
            S_IDLE: if (start) begin
                o <= 0; k <= 0; j <= 0; count <= 0;
                busy <= 1'b1; done <= 1'b0;
                state <= S_MAC;
                acc <= 0; part <= 0;
            end
            S_MAC: begin
                // k = 0 starts from the bias (the bias is the first element of the sequence)
                if (!SATURATE) begin
                    acc <= (k == 0 ? bias_o : acc) + prod;  // wrap: truncated to ACC_W bits when read
                end else if (TILE == 0) begin
`ifdef BUG_CLAMP_AT_END
                    acc <= last_k ? clamp((k == 0 ? bias_o : acc) + prod) : (k == 0 ? bias_o : acc) + prod;
`else
                    acc <= clamp((k == 0 ? bias_o : acc) + prod);
`endif
                end else begin
`ifdef BUG_CLAMP_AT_END
                    if (k == 0) acc <= bias_o;
                    part <= tile_end ? 0 : part + prod;
                    if (tile_end) acc <= last_k ? clamp((k < TILE ? bias_o : acc) + part + prod)
                                                : (k < TILE ? bias_o : acc) + part + prod;
`else
                    if (k == 0) acc <= bias_o;
                    part <= tile_end ? 0 : clamp(part + prod);
                    if (tile_end) acc <= clamp((k < TILE ? bias_o : acc) + clamp(part + prod));
`endif
                end
                if (last_k) begin
                    k <= 0; j <= 0; count <= 0;
                    state <= (N_THR > 0) ? S_REQ : S_EMIT;
                end else k <= k + 1;
            end
            S_REQ: begin
                count <= count + (hit ? 1 : 0);
                if (j == N_THR - 1) state <= S_EMIT;
                else j <= j + 1;
            end
            S_EMIT: begin
                out_valid <= 1'b1;
                out_index <= o;
                out_acc <= acc[ACC_W-1:0];
                out_code <= OUT_QMIN + count;
                if (o == O - 1) begin
                    state <= S_IDLE; busy <= 1'b0; done <= 1'b1;
                end else begin
                    o <= o + 1; state <= S_MAC;
                end
            end
            default: state <= S_IDLE;
        endcase
    end
endmodule
